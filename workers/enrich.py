"""Enrichment: the entity as it is now, and as pkrelay knew it before, for each event.

What each type fetches (and why) is the table in docs/architecture.md ("Enrichment"). Two rules shape it:

* Fresh, not stale. PluralKit dispatches member, guild and autoproxy changes *before*
  writing them, and API-created members and groups before the commit, so a GET made
  at once can return the old entity or a 404. We merge the event's `data` over what
  we fetch (or over the stored entity, below) instead of trusting the read: `data`
  holds exactly the keys that changed, so the merge is the new entity whichever
  version the API returned, and it costs no second call.
* Bursts cost little. An entity the API confirmed less than `FRESH` seconds ago is
  not fetched again: the next event merges its `data` over the stored version. A user
  editing a member ten times in a few seconds costs one call, not ten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pkrelay.pluralkit import errors
from pkrelay.pluralkit.client import PluralKitClient
from pkrelay.store import state
from pkrelay.store.state import Clear, Delete, Kind, Put
from workers import fetch

log = logging.getLogger("pkrelay.enrich")
FRESH = timedelta(seconds=10)

# The state kind each event type is about, and whether it creates, updates or deletes it.
KINDS: dict[str, tuple[Kind, str]] = {
    "UPDATE_SYSTEM": (Kind.SYSTEM, "update"),
    "UPDATE_SETTINGS": (Kind.SETTINGS, "update"),
    "CREATE_MEMBER": (Kind.MEMBER, "create"),
    "UPDATE_MEMBER": (Kind.MEMBER, "update"),
    "DELETE_MEMBER": (Kind.MEMBER, "delete"),
    "CREATE_GROUP": (Kind.GROUP, "create"),
    "UPDATE_GROUP": (Kind.GROUP, "update"),
    "DELETE_GROUP": (Kind.GROUP, "delete"),
    "CREATE_SWITCH": (Kind.SWITCH, "create"),
    "UPDATE_SWITCH": (Kind.SWITCH, "update"),
    "DELETE_SWITCH": (Kind.SWITCH, "delete"),
}
# Types whose payload already says everything there is to say: no call.
AS_SENT = frozenset({"CREATE_MESSAGE", "UPDATE_AUTOPROXY", "UPDATE_SYSTEM_GUILD", "UPDATE_MEMBER_GUILD"})
# Kinds keyed by the system's own UUID rather than the entity's.
PER_SYSTEM = frozenset({Kind.SYSTEM, Kind.SETTINGS, Kind.FRONTERS})


@dataclass
class Enriched:
    entity: Any = None
    previous: Any = None
    note: str | None = None  # why `entity` is null, for the log
    calls: int = 0
    writes: list[state.Write] = field(default_factory=list)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` over `base`, nested objects (privacy) key by key."""
    out = dict(base)
    for key, value in patch.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


async def enrich(view: state.View, client: PluralKitClient, event_type: str, system_id: str | None,
                 entity_id: str | None, data: Any) -> Enriched:
    """Read the store and the API; the state writes are returned, applied by the caller
    in the transaction that logs the event. Transport errors propagate (the job retries)."""
    if event_type in AS_SENT:
        return Enriched(entity=data)
    if event_type == "SUCCESSFUL_IMPORT" and system_id:
        return await resync(client, system_id)
    if event_type == "DELETE_ALL_SWITCHES" and system_id:
        fronters = await view.get(Kind.FRONTERS, system_id)
        return Enriched(previous=fronters.data if fronters else None,
                        writes=[Clear(Kind.SWITCH), Delete(Kind.FRONTERS, system_id)])
    if event_type not in KINDS or not system_id:
        return Enriched(note="nothing to fetch for this event")
    kind, action = KINDS[event_type]
    key = system_id if kind in PER_SYSTEM else entity_id
    if not key:
        return Enriched(note="the event names no entity")
    stored = await view.get(kind, key)
    # A row the API never confirmed holds only what a dispatch said: no version of the entity.
    previous = stored.data if stored and stored.fetched_at else None
    if action == "delete":
        result = Enriched(previous=previous, writes=[Delete(kind, key)])
        current = await view.get(Kind.FRONTERS, system_id) if kind == Kind.SWITCH else None
        if current is not None and current.data.get("id") == key:  # the front itself changed
            result.calls = 1
            try:
                fronters = fetch.as_data(await client.fronters(system_id))
            except errors.Forbidden:
                fronters = None
            result.writes.append(Put(Kind.FRONTERS, system_id, fronters, datetime.now(UTC)) if fronters
                                 else Delete(Kind.FRONTERS, system_id))
        return result
    patch = data if isinstance(data, dict) else {}
    now = datetime.now(UTC)
    result = Enriched(previous=previous if action == "update" else None)
    fetched_at: datetime | None
    if stored and stored.fetched_at and now - stored.fetched_at < FRESH:
        base, fetched_at = stored.data, None
    else:
        try:
            found, result.calls = await _fetch_created(client, kind, system_id, key, retry=action == "create")
        except errors.NotFound:
            if action == "update":
                return Enriched(previous=previous, note="gone since: the API answers 404", calls=1)
            # Still not committed: `data` is all there is to say. It is stored as a row the
            # API never confirmed, so it is neither a `previous` nor a baseline for polling.
            return Enriched(entity=patch, note="not visible in the API yet; entity is the dispatch's data",
                            calls=1 + len(CREATED_RETRIES), writes=[Put(kind, key, patch, None)])
        except errors.Forbidden as exc:
            return Enriched(previous=previous, note=f"private: {exc}", calls=1)
        base, fetched_at = fetch.as_data(found), now
    entity = merge(base, patch)
    if kind == Kind.SWITCH:
        entity["members"] = await _switch_members(view, base.get("members") or [], patch.get("members"))
    result.entity = entity
    result.writes.append(Put(kind, key, entity, fetched_at))
    if kind == Kind.SWITCH:
        current = await view.get(Kind.FRONTERS, system_id)
        if current is None or str(entity.get("timestamp", "")) >= str(current.data.get("timestamp", "")):
            result.writes.append(Put(Kind.FRONTERS, system_id, entity, fetched_at))
    return result


# PluralKit dispatches API-created members and groups before its commit, so their GET
# can answer 404 for a few hundred milliseconds: asked again after these waits (s).
CREATED_RETRIES = (0.25, 0.5, 1.0)


async def _fetch_created(client: PluralKitClient, kind: Kind, system_id: str, key: str,
                         retry: bool) -> tuple[Any, int]:
    """The entity and the calls it took; NotFound once every try has said so."""
    waits = list(CREATED_RETRIES if retry else ())
    calls = 0
    while True:
        calls += 1
        try:
            return await fetch.entity(client, kind, system_id, key), calls
        except errors.NotFound:
            if not waits:
                raise
            await asyncio.sleep(waits.pop(0))


async def _switch_members(view: state.View, fetched: list[Any], sent: list[Any] | None) -> list[Any]:
    """Full member objects for a switch, in PluralKit's order.

    Dispatches list member UUIDs in no particular order; /switches/{id} answers full
    members in the switch's real order, possibly of the state before the change. So the
    dispatch says who, the fetch says in what order: members the fetch did not return
    follow, from the store, else known only by their UUID.
    """
    if sent is None:
        return fetched
    wanted = [u for u in sent if isinstance(u, str)]
    known = {m["uuid"]: m for m in fetched if isinstance(m, dict) and m.get("uuid") in wanted}
    stored = await view.get_many(Kind.MEMBER, [u for u in wanted if u not in known])
    return [*known.values(), *(stored.get(u) or {"uuid": u} for u in dict.fromkeys(wanted) if u not in known)]


# What a full snapshot reads, in order: members before switches, which name them.
SNAPSHOT = (Kind.SETTINGS, Kind.FRONTERS, Kind.MEMBER, Kind.GROUP, Kind.SWITCH)


async def resync(client: PluralKitClient, system_id: str,
                 progress: Callable[[str], None] = lambda step: None) -> Enriched:
    """A full snapshot: after `pk;import` (which sends no dispatch for what it wrote) and
    for `pkrelay backfill`. Lists the system made private are skipped, not fatal."""
    now = datetime.now(UTC)
    system = fetch.as_data(await client.system(system_id))
    progress(Kind.SYSTEM)
    result = Enriched(entity=system, calls=1, writes=[Clear(Kind.MEMBER), Clear(Kind.GROUP), Clear(Kind.SWITCH),
                                                      Put(Kind.SYSTEM, system_id, system, now)])
    members: list[dict[str, Any]] = []
    for kind in SNAPSHOT:
        result.calls += 1
        try:
            value = fetch.as_data(await fetch.everything(client, kind, system_id))
        except errors.Forbidden:
            value = None
        if kind == Kind.MEMBER and isinstance(value, list):
            members = value
        if kind == Kind.SWITCH and isinstance(value, list):
            value = [fetch.full_switch(item, members) for item in value]
        if isinstance(value, list):
            result.writes += [Put(kind, item.get("uuid") or item["id"], item, now) for item in value]
        elif value is not None:
            result.writes.append(Put(kind, system_id, value, now))
        progress(kind)
    return result
