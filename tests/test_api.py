"""/api/events for operators, and the retention of the log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from litestar.testing import AsyncTestClient

from pkrelay import db
from pkrelay.envelope import new_event_id
from pkrelay.redis_server import EmbeddedRedis
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from workers.retention import prune_events

ADMIN = "admin-token-for-tests-0123456789"


async def test_events_api_filters_newest_first_behind_the_admin_token(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], server={"admin_token": ADMIN})
    token, system_id = system_creds["signing_token"], system_creds["system_id"]
    async with AsyncTestClient(app=dep.app()) as client:
        dispatcher = FakeDispatcher(client, "/dispatch")
        for name in ("a", "b", "c"):
            await dispatcher.send(body("UPDATE_MEMBER", token, system_id, MEMBER_ID, {"name": name}))
        await dispatcher.send(body("UPDATE_SYSTEM", token, system_id, None, {"name": "sys"}))
        await dep.work()
        auth = {"Authorization": f"Bearer {ADMIN}"}
        everything = (await client.get("/api/events", headers=auth)).json()
        assert [e["type"] for e in everything] == ["UPDATE_SYSTEM"] + ["UPDATE_MEMBER"] * 3
        members = (await client.get("/api/events", params={"type": "UPDATE_MEMBER", "limit": 2},
                                    headers=auth)).json()
        assert [e["data"]["name"] for e in members] == ["c", "b"]
        assert len((await client.get("/api/events", params={"system": "home"}, headers=auth)).json()) == 4
        assert len((await client.get("/api/events", params={"system": system_id}, headers=auth)).json()) == 4
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await client.get("/api/events", params={"since": future}, headers=auth)).json() == []
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
            answer = await client.get("/api/events", headers=headers)
            assert answer.status_code == 401 and ADMIN not in answer.text
        assert (await client.get("/api/events", params={"limit": 0}, headers=auth)).status_code == 400


async def test_events_api_is_off_without_an_admin_token(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], server={"admin_token": ""})
    async with AsyncTestClient(app=dep.app()) as client:
        assert (await client.get("/api/events", headers={"Authorization": "Bearer "})).status_code == 404


async def test_retention_prunes_only_old_events(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], server={"admin_token": ""})
    engine = db.create_engine(dep.live().current.database_url)
    now = datetime.now(UTC)
    ids = {}
    async with engine.begin() as conn:
        for label, age in (("old", timedelta(days=31)), ("recent", timedelta(days=29))):
            ids[label] = new_event_id()
            await conn.execute(db.events.insert().values(
                id=ids[label], type="UPDATE_SYSTEM", source="dispatch", system="home", system_id=None,
                entity_id=None, received_at=now - age, data={}, entity=None, previous=None))
            await conn.execute(db.deliveries.insert().values(event_id=ids[label], sink="webhook-x",
                                                             status="delivered", attempts=1))
    assert await dep.job(prune_events) == 1
    async with engine.connect() as conn:
        assert [r.id for r in (await conn.execute(db.events.select())).all()] == [ids["recent"]]
        assert [r.event_id for r in (await conn.execute(db.deliveries.select())).all()] == [ids["recent"]]
    await engine.dispose()


async def test_systems_api_shows_each_systems_pinned_uuid_and_dispatch_url(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    unpinned = {"name": "guest house", "signing_token": "g" * 64, "mode": "webhook"}
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds, unpinned],
                       server={"admin_token": ADMIN, "public_url": "https://relay.example.org/dispatch"})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    guest = fake_pk.add_system("Guest")
    async with AsyncTestClient(app=dep.app()) as client:
        before = {s["name"]: s for s in (await client.get("/api/systems", headers=auth)).json()}
        assert before["guest house"]["system_id"] is None
        assert before["home"]["system_id"] == system_creds["system_id"]
        assert before["home"]["dispatch_url"] == "https://relay.example.org/dispatch/home"
        assert before["guest house"]["dispatch_url"] == "https://relay.example.org/dispatch/guest%20house"
        # its first verified dispatch, on its own URL, pins it
        ping = body("PING", unpinned["signing_token"], guest.uuid, ping=True)
        assert (await FakeDispatcher(client, "/dispatch/guest%20house").send(ping)).status_code == 200
        after = {s["name"]: s for s in (await client.get("/api/systems", headers=auth)).json()}
        assert after["guest house"]["system_id"] == guest.uuid
