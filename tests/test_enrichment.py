"""Enrichment: every event logged with the entity as it is now and as it was before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from pkrelay import db
from pkrelay.redis_server import EmbeddedRedis
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment


class Relay:
    """A deployment with its receiver open: send dispatches, run the worker, read the log."""

    def __init__(self, dep: Deployment, client: AsyncTestClient, creds: dict[str, str]) -> None:
        self.dep, self.creds = dep, creds
        self.dispatcher = FakeDispatcher(client, "/dispatch")

    async def send(self, event_type: str, entity_id: str | None, data: object) -> None:
        content = body(event_type, self.creds["signing_token"], self.creds["system_id"], entity_id, data)
        assert (await self.dispatcher.send(content)).status_code == 200

    async def logged(self) -> list[sa.Row]:
        await self.dep.work()
        return await self.dep.logged()


@pytest.fixture
async def relay(deployment: Deployment, system_creds: dict[str, str]) -> AsyncIterator[Relay]:
    async with AsyncTestClient(app=deployment.app()) as client:
        yield Relay(deployment, client, system_creds)


async def test_member_events_carry_the_entity_and_the_previous_version(
    relay: Relay, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    member = fake_pk.add_member(fake_system, "Alex", pronouns="they/them")
    await relay.send("CREATE_MEMBER", member["uuid"], {"name": "Alex"})
    await relay.dep.work()
    member["color"] = "00ff00"
    await relay.send("UPDATE_MEMBER", member["uuid"], {"color": "00ff00"})
    await relay.dep.work()
    del fake_system.members[member["uuid"]]
    await relay.send("DELETE_MEMBER", member["uuid"], None)
    created, updated, deleted = await relay.logged()
    assert created.entity["name"] == "Alex" and created.entity["pronouns"] == "they/them"
    assert created.previous is None
    assert updated.entity["color"] == "00ff00" and updated.previous["color"] is None
    assert deleted.entity is None and deleted.previous["color"] == "00ff00"


async def test_a_change_dispatched_before_the_api_shows_it_is_still_in_the_entity(
    relay: Relay, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    """PluralKit sends UPDATE_MEMBER before its database write, and CREATE_MEMBER before the commit."""
    member = fake_pk.add_member(fake_system, "Alex")
    await relay.send("UPDATE_MEMBER", member["uuid"], {"name": "Sam", "privacy": {"description_privacy": "private"}})
    await relay.send("CREATE_MEMBER", "0d4f2b8e-0000-4000-8000-00000000abcd", {"name": "Newcomer"})
    renamed, created = await relay.logged()
    assert fake_system.members[member["uuid"]]["name"] == "Alex"  # the API still says the old name
    assert renamed.entity["name"] == "Sam" and renamed.entity["uuid"] == member["uuid"]
    assert renamed.entity["privacy"]["description_privacy"] == "private"
    assert renamed.entity["privacy"]["visibility"] == "public"  # the rest of privacy is kept
    assert created.entity == {"name": "Newcomer"}  # 404 before the commit: the event's data is what exists


async def test_switch_system_settings_message_and_import(
    relay: Relay, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    a, b = fake_pk.add_member(fake_system, "A"), fake_pk.add_member(fake_system, "B")
    group = fake_pk.add_group(fake_system, "Crew", [a["uuid"]])
    switch = fake_pk.add_switch(fake_system, [b["uuid"], a["uuid"]])
    await relay.send("CREATE_SWITCH", switch["id"], {"id": switch["id"], "timestamp": switch["timestamp"],
                                                     "members": [b["uuid"], a["uuid"]]})
    fake_system.system["name"] = "Renamed"
    await relay.send("UPDATE_SYSTEM", None, {"name": "Renamed"})
    await relay.send("UPDATE_SETTINGS", None, {"timezone": "Europe/Paris"})
    await relay.send("CREATE_MESSAGE", None, {"timestamp": "2026-11-22T18:00:00Z", "id": "1", "original": "0",
                                              "sender": "2", "channel": "3", "guild": "4", "system": None,
                                              "member": None})
    await relay.send("SUCCESSFUL_IMPORT", None, None)
    switched, system, settings, message, imported = await relay.logged()
    assert [m["name"] for m in switched.entity["members"]] == ["B", "A"]
    assert system.entity["name"] == "Renamed" and system.entity["uuid"] == fake_system.uuid
    assert settings.entity["timezone"] == "Europe/Paris" and "latch_timeout" in settings.entity
    assert message.entity == message.data
    assert imported.entity["uuid"] == fake_system.uuid
    engine = db.create_engine(relay.dep.live().current.database_url)
    async with engine.connect() as conn:
        kinds = (await conn.execute(sa.select(db.state.c.kind, sa.func.count()).group_by(db.state.c.kind))).all()
    await engine.dispose()
    assert dict(kinds) == {"system": 1, "settings": 1, "member": 2, "group": 1, "switch": 1, "fronters": 1}
    assert group["members"] == [a["uuid"]]
    assert not any("/messages/" in j.path for j in fake_pk.journal)  # a message costs no call


async def test_without_a_token_only_public_data_and_a_403_still_logs(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem,
    system_creds: dict[str, str],
) -> None:
    creds = {k: v for k, v in system_creds.items() if k != "api_token"}
    dep = await deploy(tmp_path, redis_server, fake_pk, [creds])
    member = fake_pk.add_member(fake_system, "Alex", description="diary")
    member["privacy"]["description_privacy"] = "private"
    fake_system.system["privacy"]["front_history_privacy"] = "private"
    switch = fake_pk.add_switch(fake_system, [member["uuid"]])
    async with AsyncTestClient(app=dep.app()) as client:
        relay = Relay(dep, client, creds)
        await relay.send("UPDATE_MEMBER", member["uuid"], {"pronouns": "she/her"})
        await relay.send("UPDATE_MEMBER", "4e3d2c1b-0000-4000-8000-000000000000", {"name": "gone"})
        await relay.send("UPDATE_SWITCH", switch["id"], {"timestamp": switch["timestamp"]})
        public, gone, switched = await relay.logged()
    assert public.entity["name"] == "Alex" and public.entity["description"] is None
    assert public.entity["pronouns"] == "she/her"
    assert gone.entity is None  # 404: deleted since, not an error
    assert switched.entity is None  # 403: the front is private; the event is still logged


async def test_an_api_outage_delays_enrichment_and_loses_nothing(
    relay: Relay, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    member = fake_pk.add_member(fake_system, "Alex")
    fake_pk.inject(503, {"code": 0, "message": "down"}, count=6)  # two job attempts' worth of GETs
    await relay.send("UPDATE_MEMBER", member["uuid"], {"name": "Sam"})
    [row] = await relay.logged()
    assert row.entity["name"] == "Sam" and row.entity["uuid"] == member["uuid"]
    assert [j.status for j in fake_pk.journal] == [503] * 6 + [200]


async def test_a_burst_of_edits_costs_one_call_per_entity(
    relay: Relay, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    members = [fake_pk.add_member(fake_system, f"M{i}") for i in range(3)]
    for round_ in range(10):
        for m in members:
            await relay.send("UPDATE_MEMBER", m["uuid"], {"description": f"edit {round_}"})
    rows = await relay.logged()
    assert len(rows) == 30
    assert len([j for j in fake_pk.journal if j.path.startswith("/v2/members/")]) == 3
    last = {r.entity_id: r.entity["description"] for r in rows}
    assert set(last.values()) == {"edit 9"}
    # each event's previous is the one before it: arrival order is kept
    for m in members:
        chain = [r for r in rows if r.entity_id == m["uuid"]]
        assert [r.previous["description"] for r in chain[1:]] == [f"edit {i}" for i in range(9)]


async def test_a_member_created_before_the_commit_is_fetched_again_and_delivered_whole(
    relay: Relay, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    """GET /members/{id} answers 404 for a moment after an API-created member is dispatched."""
    member = fake_pk.add_member(fake_system, "Alex", pronouns="they/them")
    fake_pk.commit_later(member, 0.6)
    await relay.send("CREATE_MEMBER", member["uuid"], {"name": "Alex"})
    [created] = await relay.logged()
    assert created.entity["uuid"] == member["uuid"] and created.entity["id"] == member["id"]
    assert created.entity["created"] and created.entity["pronouns"] == "they/them"


async def test_a_member_never_visible_in_time_is_not_stored_as_complete(
    relay: Relay, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    member = fake_pk.add_member(fake_system, "Alex", pronouns="they/them")
    fake_pk.commit_later(member, 30)
    await relay.send("CREATE_MEMBER", member["uuid"], {"name": "Alex"})
    [created] = await relay.logged()
    assert created.entity == {"name": "Alex"}  # all there was to say, and honestly no more
    fake_pk.commit_later(member, 0)
    member["color"] = "00ff00"
    await relay.send("UPDATE_MEMBER", member["uuid"], {"color": "00ff00"})
    _, updated = await relay.logged()
    assert updated.entity["uuid"] == member["uuid"] and updated.entity["color"] == "00ff00"
    assert updated.previous is None  # the partial entity is no version of the member
