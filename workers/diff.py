"""What the API says against what the store holds, as events.

A pure function of the stored snapshot and the fetched answers, so it can be tested
on its own. What a dispatch already reported is in the store and yields nothing;
anything else becomes an event with `source: "poll"`, PluralKit's type name and only
the changed keys in `data`. A kind never seen before is recorded quietly, as the
baseline. An entity a dispatch wrote while the answers were on their way (`moved`)
is left alone: the answer may be older than what the dispatch stored, and reporting
it would turn a stale value into a change (and back, at the next poll).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pkrelay.envelope import Event, new_event_id
from pkrelay.store.state import Delete, Kind, Put, Snapshot, Write
from workers.fetch import full_switch

# Keys that change on their own (every proxied message) and that PluralKit never dispatches.
VOLATILE = frozenset({"message_count", "last_message_timestamp", "webhook_url"})


@dataclass
class Changes:
    events: list[tuple[Event, list[Write]]] = field(default_factory=list)
    quiet: list[Write] = field(default_factory=list)  # first sights: the baseline, no event


def _same(old: Any, new: Any) -> bool:
    """Equal, or both nothing: a key the store never had, null and an empty list are
    one state (a group stored from GET /groups/{id} has no `members`; the poll's
    `with_members` list says `[]`)."""
    return old == new or (old in (None, []) and new in (None, []))


def changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in new.items() if k not in VOLATILE and not _same(old.get(k), v)}


def _uuids(switch: dict[str, Any]) -> list[Any]:
    return [m.get("uuid", m.get("id")) for m in switch.get("members", [])]


def _created_switch(switch: dict[str, Any]) -> dict[str, Any]:
    """CREATE_SWITCH `data` as PluralKit dispatches it: members by UUID."""
    return {"id": switch["id"], "timestamp": switch.get("timestamp"), "members": _uuids(switch)}


def diff(system_id: str, stored: Snapshot, fetched: dict[Kind, Any], now: datetime,
         moved: Collection[tuple[Kind, str]] = frozenset()) -> Changes:
    """The events (with their state writes) that turn `stored` into `fetched`, except
    for the entities in `moved`, which yield nothing and write nothing.

    `fetched` holds the JSON shape of each answer by kind: objects for system,
    settings and fronters, lists for members, groups and switches.
    """
    return _Diff(system_id, stored, now, moved).run(fetched)


class _Diff:
    def __init__(self, system_id: str, stored: Snapshot, now: datetime, moved: Collection[tuple[Kind, str]]) -> None:
        self.system_id = system_id
        self.stored = stored.rows
        self.unconfirmed = stored.unconfirmed
        self.moved = moved
        self.now = now
        self.out = Changes()

    def emit(self, event_type: str, entity_id: str | None, data: Any, entity: Any, previous: Any,
             writes: list[Write]) -> None:
        event = Event(id=new_event_id(), type=event_type, source="poll", system_id=self.system_id,
                      entity_id=entity_id, received_at=self.now, data=data, entity=entity, previous=previous)
        self.out.events.append((event, writes))

    def run(self, fetched: dict[Kind, Any]) -> Changes:
        for kind, event_type in ((Kind.SYSTEM, "UPDATE_SYSTEM"), (Kind.SETTINGS, "UPDATE_SETTINGS")):
            if kind in fetched:
                self.single(kind, event_type, fetched[kind])
        for kind, noun in ((Kind.MEMBER, "MEMBER"), (Kind.GROUP, "GROUP")):
            if kind in fetched:
                self.collection(kind, noun, fetched[kind])
        if Kind.FRONTERS in fetched:
            self.fronters(fetched[Kind.FRONTERS])
        if fetched.get(Kind.SWITCH):
            members = {**self.stored[Kind.MEMBER], **{m["uuid"]: m for m in fetched.get(Kind.MEMBER, [])}}
            listed = [full_switch(sw, members.values()) for sw in fetched[Kind.SWITCH]]
            self.switches(listed, (fetched.get(Kind.FRONTERS) or {}).get("id"))
        return self.out

    def single(self, kind: Kind, event_type: str, entity: dict[str, Any]) -> None:
        if (kind, self.system_id) in self.moved:
            return
        before = self.stored[kind].get(self.system_id)
        writes: list[Write] = [Put(kind, self.system_id, entity, self.now)]
        if before is None:
            self.out.quiet += writes
        elif delta := changed(before, entity):
            self.emit(event_type, None, delta, entity, before, writes)

    def collection(self, kind: Kind, noun: str, entities: list[dict[str, Any]]) -> None:
        stored_all = self.stored[kind]
        first_sight = not stored_all
        current = {e["uuid"]: e for e in entities}
        for uuid, entity in current.items():
            if (kind, uuid) in self.moved:
                continue
            before = stored_all.get(uuid)
            writes: list[Write] = [Put(kind, uuid, entity, self.now)]
            if before is None:
                if first_sight or (kind, uuid) in self.unconfirmed:  # a dispatch already said it was created
                    self.out.quiet += writes
                else:
                    self.emit(f"CREATE_{noun}", uuid, entity, entity, None, writes)
                continue
            delta = changed(before, entity)
            members = delta.pop("members", None) if kind == Kind.GROUP else None
            if delta:
                self.emit(f"UPDATE_{noun}", uuid, delta, entity, before, writes)
            if members is not None:  # no dispatch exists for this: only polling sees it
                self.emit("UPDATE_GROUP_MEMBERS", uuid, {"members": members}, entity, before, writes)
        for uuid, before in stored_all.items():
            if uuid not in current and (kind, uuid) not in self.moved:
                self.emit(f"DELETE_{noun}", uuid, None, None, before, [Delete(kind, uuid)])

    def fronters(self, front: dict[str, Any]) -> None:
        stored = self.stored[Kind.FRONTERS].get(self.system_id)
        switch_id = front.get("id")
        if (Kind.FRONTERS, self.system_id) in self.moved or (Kind.SWITCH, switch_id) in self.moved:
            return
        writes: list[Write] = [Put(Kind.FRONTERS, self.system_id, front, self.now)]
        if switch_id:
            writes.append(Put(Kind.SWITCH, switch_id, front, self.now))
        members = _uuids(front)
        if stored is None:
            self.out.quiet += writes
        elif stored.get("id") != switch_id:
            if switch_id and switch_id not in self.stored[Kind.SWITCH]:
                self.emit("CREATE_SWITCH", switch_id, _created_switch(front), front, None, writes)
            else:
                self.out.quiet += writes
        else:
            delta: dict[str, Any] = {}
            if _uuids(stored) != members:
                delta["members"] = members
            if stored.get("timestamp") != front.get("timestamp"):
                delta["timestamp"] = front.get("timestamp")
            if delta:
                self.emit("UPDATE_SWITCH", switch_id, delta, front, stored, writes)

    def switches(self, listed: list[dict[str, Any]], current_id: str | None) -> None:
        """Front history: switches logged in the past or deleted, seen in the newest 100."""
        stored = self.stored[Kind.SWITCH]
        by_id = {s["id"]: s for s in listed}
        if not stored:
            self.out.quiet += [Put(Kind.SWITCH, sid, sw, self.now) for sid, sw in by_id.items()]
            return
        emitted = {e.entity_id for e, _ in self.out.events}
        for sid, sw in by_id.items():
            if sid not in stored and sid != current_id and sid not in emitted and (Kind.SWITCH, sid) not in self.moved:
                self.emit("CREATE_SWITCH", sid, _created_switch(sw), sw, None, [Put(Kind.SWITCH, sid, sw, self.now)])
        oldest = min(s["timestamp"] for s in listed)
        for sid, before in stored.items():
            if sid not in by_id and sid != current_id and str(before.get("timestamp", "")) >= oldest \
                    and (Kind.SWITCH, sid) not in self.moved:
                self.emit("DELETE_SWITCH", sid, None, None, before, [Delete(Kind.SWITCH, sid)])
