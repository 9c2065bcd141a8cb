"""The poll diff on its own: stored snapshot + API answers in, events out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pkrelay.store.state import Delete, Kind, Put, Snapshot
from workers.diff import diff

SYSTEM = "sys-uuid"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def member(uuid: str, short: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"uuid": uuid, "id": short, "name": name, "message_count": 0, **extra}


def snapshot(**kinds: dict[str, dict[str, Any]]) -> Snapshot:
    out = Snapshot()
    for name, rows in kinds.items():
        out.rows[Kind(name)] = rows
    return out


def types(changes: Any) -> list[str]:
    return [event.type for event, _ in changes.events]


def test_a_kind_seen_for_the_first_time_is_a_quiet_baseline() -> None:
    alex = member("m1", "aaaaa", "Alex")
    changes = diff(SYSTEM, snapshot(), {Kind.MEMBER: [alex], Kind.SYSTEM: {"uuid": SYSTEM, "name": "S"}}, NOW)
    assert changes.events == []
    assert Put(Kind.MEMBER, "m1", alex, NOW) in changes.quiet
    assert Put(Kind.SYSTEM, SYSTEM, {"uuid": SYSTEM, "name": "S"}, NOW) in changes.quiet


def test_an_edit_carries_only_the_changed_keys_and_message_counters_are_no_change() -> None:
    before = member("m1", "aaaaa", "Alex", color="ff0000")
    after = member("m1", "aaaaa", "Alex", color="00ff00", message_count=7, last_message_timestamp="x")
    changes = diff(SYSTEM, snapshot(member={"m1": before}), {Kind.MEMBER: [after]}, NOW)
    assert types(changes) == ["UPDATE_MEMBER"]
    event, writes = changes.events[0]
    assert (event.data, event.entity, event.previous) == ({"color": "00ff00"}, after, before)
    assert event.source == "poll" and event.entity_id == "m1" and event.system_id == SYSTEM
    assert writes == [Put(Kind.MEMBER, "m1", after, NOW)]

    only_counters = member("m1", "aaaaa", "Alex", color="ff0000", message_count=99)
    assert diff(SYSTEM, snapshot(member={"m1": before}), {Kind.MEMBER: [only_counters]}, NOW).events == []


def test_members_appearing_and_vanishing_are_created_and_deleted() -> None:
    alex, sam = member("m1", "aaaaa", "Alex"), member("m2", "bbbbb", "Sam")
    changes = diff(SYSTEM, snapshot(member={"m1": alex}), {Kind.MEMBER: [sam]}, NOW)
    assert sorted(types(changes)) == ["CREATE_MEMBER", "DELETE_MEMBER"]
    by_type = {event.type: (event, writes) for event, writes in changes.events}
    created, _ = by_type["CREATE_MEMBER"]
    deleted, delete_writes = by_type["DELETE_MEMBER"]
    assert created.entity == sam and created.previous is None
    assert deleted.entity is None and deleted.previous == alex and delete_writes == [Delete(Kind.MEMBER, "m1")]


def test_group_membership_is_its_own_event() -> None:
    before = {"uuid": "g1", "id": "ggggg", "name": "Band", "members": ["m1"]}
    after = {**before, "members": ["m1", "m2"]}
    changes = diff(SYSTEM, snapshot(group={"g1": before}), {Kind.GROUP: [after]}, NOW)
    assert types(changes) == ["UPDATE_GROUP_MEMBERS"]
    assert changes.events[0][0].data == {"members": ["m1", "m2"]}


def test_a_new_current_switch_is_created_with_member_uuids_and_an_edit_updates_it() -> None:
    alex, sam = member("m1", "aaaaa", "Alex"), member("m2", "bbbbb", "Sam")
    old = {"id": "s1", "timestamp": "2026-12-01T10:00:00Z", "members": [alex]}
    new = {"id": "s2", "timestamp": "2026-12-01T11:00:00Z", "members": [sam, alex]}
    stored = snapshot(fronters={SYSTEM: old}, switch={"s1": old})
    changes = diff(SYSTEM, stored, {Kind.FRONTERS: new}, NOW)
    assert types(changes) == ["CREATE_SWITCH"]
    event, writes = changes.events[0]
    assert event.data == {"id": "s2", "timestamp": new["timestamp"], "members": ["m2", "m1"]}
    assert event.entity == new
    assert writes == [Put(Kind.FRONTERS, SYSTEM, new, NOW), Put(Kind.SWITCH, "s2", new, NOW)]

    edited = {**old, "members": [alex, sam]}
    changes = diff(SYSTEM, stored, {Kind.FRONTERS: edited}, NOW)
    assert types(changes) == ["UPDATE_SWITCH"] and changes.events[0][0].data == {"members": ["m1", "m2"]}


def test_switch_history_reports_a_past_switch_and_a_deletion_inside_the_listed_window() -> None:
    alex = member("m1", "aaaaa", "Alex")
    current = {"id": "s3", "timestamp": "2026-12-01T11:00:00Z", "members": [alex]}
    kept = {"id": "s1", "timestamp": "2026-12-01T09:00:00Z", "members": [alex]}
    deleted = {"id": "s2", "timestamp": "2026-12-01T10:00:00Z", "members": [alex]}
    ancient = {"id": "s0", "timestamp": "2020-01-01T00:00:00Z", "members": [alex]}  # older than the 100 listed
    stored = snapshot(member={"m1": alex}, fronters={SYSTEM: current},
                      switch={"s3": current, "s1": kept, "s2": deleted, "s0": ancient})
    backdated = {"id": "s9", "timestamp": "2026-12-01T09:30:00Z", "members": ["aaaaa"]}  # /switches: short ids
    listed = [{**current, "members": ["aaaaa"]}, backdated, {**kept, "members": ["aaaaa"]}]
    changes = diff(SYSTEM, stored, {Kind.FRONTERS: current, Kind.SWITCH: listed}, NOW)
    assert sorted(types(changes)) == ["CREATE_SWITCH", "DELETE_SWITCH"]
    by_type = {event.type: event for event, _ in changes.events}
    assert by_type["CREATE_SWITCH"].entity_id == "s9"
    assert by_type["CREATE_SWITCH"].entity["members"] == [alex]  # short ids resolved to full members
    assert by_type["DELETE_SWITCH"].entity_id == "s2"


def test_system_and_settings_changes() -> None:
    stored = snapshot(system={SYSTEM: {"uuid": SYSTEM, "name": "Old", "webhook_url": "a"}},
                      settings={SYSTEM: {"timezone": "UTC"}})
    fetched = {Kind.SYSTEM: {"uuid": SYSTEM, "name": "New", "webhook_url": "b"},
               Kind.SETTINGS: {"timezone": "Europe/Berlin"}}
    changes = diff(SYSTEM, stored, fetched, NOW)
    assert [(e.type, e.data) for e, _ in changes.events] == [
        ("UPDATE_SYSTEM", {"name": "New"}), ("UPDATE_SETTINGS", {"timezone": "Europe/Berlin"})]


def test_an_empty_group_created_by_dispatch_is_no_membership_change() -> None:
    """Enrichment stores a group as GET /groups/{id} shows it (no `members` key); the
    poll's `with_members` list shows `[]`: nothing changed."""
    from_dispatch = {"uuid": "g1", "id": "ggggg", "name": "Band"}
    polled = {**from_dispatch, "members": []}
    assert diff(SYSTEM, snapshot(group={"g1": from_dispatch}), {Kind.GROUP: [polled]}, NOW).events == []
    joined = {**from_dispatch, "members": ["m1"]}
    changes = diff(SYSTEM, snapshot(group={"g1": from_dispatch}), {Kind.GROUP: [joined]}, NOW)
    assert [(e.type, e.data) for e, _ in changes.events] == [("UPDATE_GROUP_MEMBERS", {"members": ["m1"]})]


def test_a_member_only_a_dispatch_described_is_completed_quietly() -> None:
    """CREATE_MEMBER was logged with the dispatch's data (the API did not show it yet);
    the poll that first sees it whole reports no second creation."""
    alex, sam = member("m1", "aaaaa", "Alex"), member("m2", "bbbbb", "Sam")
    stored = snapshot(member={"m1": alex})
    stored.unconfirmed.add((Kind.MEMBER, "m2"))
    changes = diff(SYSTEM, stored, {Kind.MEMBER: [alex, sam]}, NOW)
    assert changes.events == [] and Put(Kind.MEMBER, "m2", sam, NOW) in changes.quiet
