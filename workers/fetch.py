"""Reading the API by state kind: the one table of which call answers for what.

Enrichment asks for one entity (`entity`), resync and polling for everything of a
kind (`everything`). Answers stay typed models until `as_data`, where the store and
the envelope need plain JSON-shaped dicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from pkrelay.pluralkit import models
from pkrelay.pluralkit.client import PluralKitClient
from pkrelay.store.state import Kind

Answer = models.Model | list[models.Member] | list[models.Group] | list[models.Switch] | None


async def entity(client: PluralKitClient, kind: Kind, system_ref: str, key: str) -> models.Model:
    """One entity as the API shows it now; `key` is the member, group or switch id."""
    match kind:
        case Kind.SYSTEM:
            return await client.system(system_ref)
        case Kind.SETTINGS:
            return await client.settings(system_ref)
        case Kind.MEMBER:
            return await client.member(key)
        case Kind.GROUP:
            return await client.group(key)
        case Kind.SWITCH:
            return await client.switch(system_ref, key)
    raise ValueError(f"no single-entity call for {kind}")


async def everything(client: PluralKitClient, kind: Kind, system_ref: str) -> Answer:
    """All of a kind: lists for members, groups and the newest 100 switches, the current
    switch (None if never switched) for fronters, the object for system and settings."""
    match kind:
        case Kind.SYSTEM:
            return await client.system(system_ref)
        case Kind.SETTINGS:
            return await client.settings(system_ref)
        case Kind.FRONTERS:
            return await client.fronters(system_ref)
        case Kind.MEMBER:
            return await client.members(system_ref)
        case Kind.GROUP:
            return await client.groups(system_ref, with_members=True)
        case Kind.SWITCH:
            return await client.switches(system_ref, limit=100)


def as_data(answer: Any) -> Any:
    """The JSON shape of an answer, as stored and delivered."""
    return msgspec.to_builtins(answer)


def full_switch(switch: dict[str, Any], members: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A switch from /switches (members by short id) in the one shape the store and the
    envelope use, as /fronters and /switches/{id} give it: full member objects."""
    by_id = {m["id"]: m for m in members if "id" in m}
    listed = switch.get("members") or []
    return {**switch, "members": [m if isinstance(m, dict) else by_id.get(m, {"id": m}) for m in listed]}
