"""A system's public front as /public/{name}/front shows it, read from the state store.

Only what PluralKit's public view shows (pkrelay/privacy.py, as for `public_only`
sinks): the system's public fields, and its fronters only while its front is public,
each member only while it is visible, each field only while its privacy says public.
Nothing here calls the API: a system the store does not know yet shows no one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from pkrelay import privacy
from pkrelay.config import SystemConfig
from pkrelay.pins import pinned
from pkrelay.store import state
from pkrelay.store.state import Kind
from receiver.relay import Relay

SYSTEM_KEYS = ("name", "tag", "avatar_url", "color")
FRONTER_KEYS = ("name", "display_name", "pronouns", "avatar_url", "color")


@dataclass(frozen=True)
class Front:
    """The public object, encoded; its ETag; the UUIDs of everyone listed as fronting,
    shown or not (an edit of any of them may change what is shown)."""

    body: bytes
    etag: str
    fronting: frozenset[str]


def public_system(relay: Relay, name: str) -> SystemConfig | None:
    """The configured system of this name when its front is public, else None: a
    system that is not public and one that does not exist take the same path."""
    system = relay.live.current.system(name)
    return system if system is not None and system.public_front else None


def shown(system: dict[str, Any] | None, front: dict[str, Any] | None,
          members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The public object from the stored system, fronters and fronting members."""
    public = privacy.public_system(system) or {}
    out: dict[str, Any] = {"system": {k: public.get(k) for k in SYSTEM_KEYS}, "fronters": [], "since": None}
    if front is None or not privacy.front_is_public(system):
        return out
    listed = [{"uuid": m} if isinstance(m, str) else m for m in front.get("members") or []]
    # Each fronter as its member record is now: an edit since the switch counts.
    current = [{**m, **members.get(str(m.get("uuid")), {})} for m in listed if isinstance(m, dict)]
    for member in (privacy.public_switch({"members": current}, system) or {}).get("members") or []:
        out["fronters"].append({k: member.get(k) for k in FRONTER_KEYS})
    since = front.get("timestamp")
    out["since"] = since if isinstance(since, str) else None
    return out


def _fronting(front: dict[str, Any] | None) -> frozenset[str]:
    listed = (front or {}).get("members") or []
    return frozenset(str(m.get("uuid") if isinstance(m, dict) else m) for m in listed)


async def read(relay: Relay, system: SystemConfig) -> Front:
    """The system's public front as the store holds it now."""
    uuid = pinned(system, await relay.pins.refresh())
    stored_system = front = None
    members: dict[str, dict[str, Any]] = {}
    if uuid is not None:
        async with relay.engine.connect() as conn:
            row = await state.get(conn, uuid, Kind.SYSTEM, uuid)
            stored_system = row.data if row else None
            row = await state.get(conn, uuid, Kind.FRONTERS, uuid)
            front = row.data if row else None
            if front is not None and _fronting(front):
                members = await state.get_many(conn, uuid, Kind.MEMBER, sorted(_fronting(front)))
    body = msgspec.json.encode(shown(stored_system, front, members))
    return Front(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"', _fronting(front))


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (weak or strong, or `*`)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
