"""Nothing acknowledged is ever stuck or lost: poison events, database outages, lost
jobs, and the switch order integrations see."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name, job_key_prefix
from litestar.testing import AsyncTestClient

from pkrelay import db, keys
from pkrelay.envelope import Event, new_event_id
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store.state import Kind
from tests import postgres
from tests.deployment import deploy, webhook_sink
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.sink_server import SinkServer
from tests.test_delivery import FAST, _deliveries, _serve, sinks  # noqa: F401 (sinks: a fixture)
from tests.waiting import until
from workers.record import record
from workers.resources import Resources
from workers.sweep import sweep

HUGE = b"9" * 4500  # an integer no JSON decoder of ours keeps, in a key PluralKit's model does not check


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """SQLite (the default: an empty url) and PostgreSQL, where initdb is installed."""
    return "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


async def _send(dep: Deployment, *contents: bytes) -> None:
    async with AsyncTestClient(app=dep.app()) as client:
        for content in contents:
            assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200


def _update(creds: dict[str, str], member: str, data: dict[str, Any]) -> bytes:
    return body("UPDATE_MEMBER", creds["signing_token"], creds["system_id"], member, data)


async def _until_logged(caplog: pytest.LogCaptureFixture, text: str, count: int, timeout: float) -> None:
    async def seen() -> bool:
        return sum(text in r.getMessage() for r in caplog.records) >= count
    await until(seen, timeout, f"{count} log lines saying {text!r}")


# A poison event ---------------------------------------------------------------------


async def test_a_poison_event_is_logged_as_text_and_its_system_goes_on(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, sinks: list[SinkServer], database_url: str,  # noqa: F811
) -> None:
    member = fake_pk.add_member(fake_system, "Alex")
    sink = _serve(sinks)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], database={"url": database_url},
                       sinks=[webhook_sink(sink.url)])
    poison = _update(system_creds, member["uuid"], {"name": "Kim", "huge": "HUGE"}).replace(b'"HUGE"', HUGE)
    infinite = _update(system_creds, member["uuid"], {"name": "Ana", "far": "FAR"}).replace(b'"FAR"', b"1e999")
    await _send(dep, _update(system_creds, member["uuid"], {"name": "Sam"}), poison, infinite,
                _update(system_creds, member["uuid"], {"name": "Lee"}))
    await dep.work(FAST)
    first, bad, worse, after = await dep.logged()
    assert first.entity["name"] == "Sam" and after.entity["name"] == "Lee"
    assert bad.entity is None and isinstance(bad.data, str) and HUGE.decode() in bad.data  # visible, as text
    assert worse.entity is None and worse.data == '{"name":"Ana","far":1e999}'
    assert len(sink.received) == 4 and {d.status for d in await _deliveries(dep)} == {"delivered"}

    await _send(dep, _update(system_creds, member["uuid"], {"name": "Max"}))  # after a restart too
    await dep.work(FAST)
    assert (await dep.logged())[-1].entity["name"] == "Max"

    redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
    try:
        assert await redis.zcard(keys.pending("home")) == 0
    finally:
        await redis.aclose()
    now = time.time()
    await dep.poll(now)
    member["name"] = "Polled"
    assert await dep.poll(now + 7 * 86400) >= 1  # polling of the system goes on
    assert (await dep.logged())[-1].entity["name"] == "Polled"


async def test_every_field_a_database_refuses_is_stored_another_way(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    database_url: str,
) -> None:
    """NUL bytes (PostgreSQL refuses them in text), fields longer than their column: in
    one batch with good events, each bad one is logged as text and the others as sent."""
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], database={"url": database_url})
    system_id = system_creds["system_id"]
    now = datetime.now(UTC)

    def event(entity_id: str, data: Any, event_type: str = "UPDATE_MEMBER") -> Event:
        return Event(id=new_event_id(), type=event_type, source="dispatch", system_id=system_id,
                     entity_id=entity_id, received_at=now, data=data, entity={"name": "x"})

    good = event("a-member", {"name": "fine"})
    nul_id = event("nul\x00member", {"name": "x"})
    long_id = event("m" * 200, {"name": "x"})
    nul_data = event("b-member", {"name": "nul\x00name"})
    long_type = event("c-member", None, "T" * 100)
    last = event("d-member", {"name": "also fine"})
    items = [(e, []) for e in (good, nul_id, long_id, nul_data, long_type, last)]

    async def write(ctx: dict[str, Any]) -> set[str]:
        return await record(Resources.of(ctx), "home", items)  # type: ignore[arg-type]

    assert await dep.job(write) == {e.id for e, _ in items}
    rows = {r.id: r for r in await dep.logged()}
    assert rows[good.id].data == {"name": "fine"} and rows[last.id].entity == {"name": "x"}
    assert rows[nul_data.id].data == {"name": "nul\x00name"}  # JSON escapes it: every database keeps it
    for bad in (nul_id, long_id, long_type):
        row = rows[bad.id]
        stored_as_sent = row.data == bad.data and row.entity_id == bad.entity_id and row.type == bad.type
        assert stored_as_sent or (isinstance(row.data, str) and row.entity is None)
        if database_url:  # PostgreSQL refuses each of them as sent
            assert not stored_as_sent and "\x00" not in (row.entity_id or "") and len(row.type) <= 64


# A database outage ----------------------------------------------------------------


async def test_dispatches_received_while_postgresql_is_down_are_logged_when_it_is_back(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, pg_cluster: postgres.Cluster, pg_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    member = fake_pk.add_member(fake_system, "Alex")
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], database={"url": pg_url})
    pg_cluster.pause()
    try:
        await _send(dep, *(_update(system_creds, member["uuid"], {"name": f"n{i}"}) for i in range(3)))
        worker = asyncio.create_task(dep.work(FAST))
        await _until_logged(caplog, "the database is unavailable", 2, 30)
    finally:
        pg_cluster.resume()
    await asyncio.wait_for(worker, 60)
    assert [r.entity["name"] for r in await dep.logged()] == ["n0", "n1", "n2"]


@pytest.mark.fault
async def test_dispatches_logged_while_sqlite_is_locked_by_another_writer_are_logged_after(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holds the database (BEGIN EXCLUSIVE) longer than SQLite waits
    (30 s): the ingest job retries instead of failing, and logs once the lock is gone."""
    member = fake_pk.add_member(fake_system, "Alex")
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds])
    await _send(dep, *(_update(system_creds, member["uuid"], {"name": f"n{i}"}) for i in range(3)))
    other = sqlite3.connect(tmp_path / "data" / "pkrelay.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    try:
        worker = asyncio.create_task(dep.work(FAST))
        await _until_logged(caplog, "the database is unavailable", 1, 90)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(worker, 90)
    assert [r.entity["name"] for r in await dep.logged()] == ["n0", "n1", "n2"]


async def test_deliveries_in_retry_through_a_postgresql_outage_are_delivered_after(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, pg_cluster: postgres.Cluster, pg_url: str, caplog: pytest.LogCaptureFixture,
    sinks: list[SinkServer],  # noqa: F811
) -> None:
    member = fake_pk.add_member(fake_system, "Alex")
    healthy = threading.Event()
    sink = _serve(sinks, respond=lambda n: 200 if healthy.is_set() else 500)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], database={"url": pg_url},
                       sinks=[webhook_sink(sink.url)])
    await _send(dep, *(_update(system_creds, member["uuid"], {"name": f"n{i}"}) for i in range(5)))
    worker = asyncio.create_task(dep.work(FAST))

    async def all_failed_once() -> bool:
        return len({r.headers["webhook-id"] for r in sink.received}) == 5
    await until(all_failed_once, 60, "every delivery attempted")
    pg_cluster.pause()
    try:
        await _until_logged(caplog, "deliver: the database is unavailable", 5, 60)
    finally:
        pg_cluster.resume()
    healthy.set()
    await asyncio.wait_for(worker, 90)
    rows = await _deliveries(dep)
    assert len(rows) == 5 and {d.status for d in rows} == {"delivered"}


# Work no job holds ------------------------------------------------------------------


async def _drop_jobs(dep: Deployment) -> None:
    """What a lost job leaves behind (a worker killed between logging and enqueuing, a
    job arq gave up on): the work recorded, nothing queued."""
    redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
    try:
        ids = [i.decode() for i in await redis.zrange(default_queue_name, 0, -1)]
        if ids:
            await redis.delete(default_queue_name, *(job_key_prefix + i for i in ids))
    finally:
        await redis.aclose()


async def test_the_sweep_enqueues_pending_events_and_deliveries_no_job_holds(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, sinks: list[SinkServer],  # noqa: F811
) -> None:
    member = fake_pk.add_member(fake_system, "Alex")
    sink = _serve(sinks)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    await _send(dep, *(_update(system_creds, member["uuid"], {"name": f"n{i}"}) for i in range(3)))
    await _drop_jobs(dep)
    await dep.work(FAST)
    assert await dep.logged() == []  # nothing queued: nothing done
    assert await dep.job(sweep) == 1  # one job, for the newest pending event: it logs the older ones first
    assert await dep.job(sweep) == 0  # that job is queued: nothing more
    await dep.work(FAST)
    assert [r.entity["name"] for r in await dep.logged()] == ["n0", "n1", "n2"]
    assert len(sink.received) == 3

    await _send(dep, _update(system_creds, member["uuid"], {"name": "n3"}))
    [payload] = await _pending_payloads(dep)
    from workers.ingest import ingest_dispatch

    assert await dep.job(ingest_dispatch, payload)  # logged, its delivery planned and enqueued...
    await _drop_jobs(dep)  # ...and that job lost
    assert await dep.job(sweep) == 1
    await dep.work(FAST)
    assert len(sink.received) == 4 and {d.status for d in await _deliveries(dep)} == {"delivered"}


async def _pending_payloads(dep: Deployment) -> list[bytes]:
    redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
    try:
        return list((await redis.hgetall(keys.payloads("home"))).values())
    finally:
        await redis.aclose()


# Fronters in PluralKit's order --------------------------------------------------------


async def test_a_switch_lists_its_fronters_in_pluralkits_order_not_the_dispatchs(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
) -> None:
    """CREATE_SWITCH lists member UUIDs in no particular order (the fake dispatcher
    shuffles them); /switches/{id} and /fronters give the real one."""
    members = [fake_pk.add_member(fake_system, name) for name in ("Finley", "Eden", "Casey")]
    switch = fake_pk.add_switch(fake_system, [m["uuid"] for m in members])
    sent = body("CREATE_SWITCH", system_creds["signing_token"], system_creds["system_id"], switch["id"],
                {"id": switch["id"], "timestamp": switch["timestamp"], "members": switch["members"]})
    await _send(deployment, sent)
    await deployment.work()
    [row] = await deployment.logged()
    assert row.data["members"] != switch["members"]  # as PluralKit may send it
    assert [m["name"] for m in row.entity["members"]] == ["Finley", "Eden", "Casey"]
    engine = db.create_engine(deployment.live().current.database_url)
    try:
        async with engine.connect() as conn:
            fronters = (await conn.execute(sa.select(db.state.c.data).where(
                db.state.c.kind == Kind.FRONTERS, db.state.c.key == system_creds["system_id"]))).scalar_one()
    finally:
        await engine.dispose()
    assert [m["name"] for m in fronters["members"]] == ["Finley", "Eden", "Casey"]

