"""The queue between receiver and workers survives crashes on either side."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from pkrelay import keys, queue
from pkrelay.envelope import new_event_id
from pkrelay.redis_server import EmbeddedRedis, free_port
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.servers import pkrelay_process
from tests.sink_server import Received, SinkServer
from tests.waiting import until


def _job(i: int, system_id: str) -> tuple[str, str, bytes]:
    event_id = new_event_id()
    return event_id, "home", queue.encode(queue.QueuedDispatch(
        event_id=event_id, received_ms=int(time.time() * 1000), system="home", type="UPDATE_SYSTEM",
        system_id=system_id, entity_id=None, data=b'{"name":"n%d"}' % i,
    ))


async def test_the_embedded_server_killed_and_restarted_keeps_its_queued_jobs(
    deployment: Deployment, redis_server: EmbeddedRedis, system_creds: dict[str, str]
) -> None:
    redis = queue.connect(redis_server.url)
    await queue.enqueue(redis, [_job(i, system_creds["system_id"]) for i in range(50)])
    await redis.aclose()
    redis_server.kill()  # SIGKILL: no chance to flush anything on the way out
    redis_server.start()
    redis = queue.connect(redis_server.url)
    assert await queue.depth(redis) == 50
    await redis.aclose()
    await deployment.work()
    assert [r.data["name"] for r in await deployment.logged()] == [f"n{i}" for i in range(50)]


async def test_a_job_enqueued_twice_logs_one_event(deployment: Deployment, redis_server: EmbeddedRedis,
                                                   system_creds: dict[str, str]) -> None:
    job = _job(1, system_creds["system_id"])
    redis = queue.connect(redis_server.url)
    await queue.enqueue(redis, [job])
    await deployment.work()
    await queue.enqueue(redis, [job])  # e.g. a spooled event whose unlink was lost in a crash
    await deployment.work()
    await redis.aclose()
    rows = await deployment.logged()
    assert [r.id for r in rows] == [job[0]]


async def test_a_burst_of_one_system_is_logged_once_in_order_and_leaves_no_job_behind(
        deployment: Deployment, redis_server: EmbeddedRedis, system_creds: dict[str, str]) -> None:
    jobs = [_job(i, system_creds["system_id"]) for i in range(120)]
    redis = queue.connect(redis_server.url)
    await queue.enqueue(redis, jobs)
    await deployment.work()
    assert await queue.depth(redis) == 0
    assert not await redis.keys("arq:job:*") and not await redis.keys("pkrelay:p*")
    await redis.aclose()
    rows = await deployment.logged()
    assert sorted(r.id for r in rows) == [j[0] for j in jobs]
    assert [r.data["name"] for r in sorted(rows, key=lambda r: r.id)] == [f"n{i}" for i in range(120)]


async def test_logged_events_withdraw_only_the_jobs_no_worker_has_started(redis_server: EmbeddedRedis) -> None:
    first, started, waiting = (_job(i, "sys") for i in range(3))
    redis = queue.connect(redis_server.url)
    await queue.enqueue(redis, [first, started, waiting])
    await redis.set("arq:in-progress:" + started[0], b"1")
    await queue.logged(redis, "home", [first[0], started[0], waiting[0]], running=first[0])
    assert not await redis.exists(keys.pending("home"), keys.payloads("home"))
    assert {i.decode() for i in await redis.zrange("arq:queue", 0, -1)} == {first[0], started[0]}
    assert await redis.exists("arq:job:" + first[0], "arq:job:" + started[0]) == 2
    assert not await redis.exists("arq:job:" + waiting[0])
    await redis.aclose()


async def test_jobs_held_or_taken_are_left_alone_until_released_or_orphaned_by_a_dead_taker(
        redis_server: EmbeddedRedis) -> None:
    redis = queue.connect(redis_server.url)
    lead, held, due, started, deferred = (f"deliver:{new_event_id()}:sink" for _ in range(5))
    jobs = [queue.Job(lead, ()), queue.Job(held, (), holder=lead), queue.Job(due, ()), queue.Job(started, ()),
            queue.Job(deferred, ())]
    assert await queue.enqueue_unique(redis, "deliver", jobs, 60_000) == 5
    assert await redis.zscore("arq:queue", held) is None  # held for its leader, not queued
    await redis.set("arq:in-progress:" + started, b"1")
    await redis.zadd("arq:queue", {deferred: time.time() * 1000 + 60_000})
    assert await queue.take_over(redis, "another", [held]) == []  # held for another job
    assert await queue.take_over(redis, lead, [held, due, started, deferred]) == [held, due]
    assert await queue.take_over(redis, "another", [held, due]) == []
    assert await queue.take_over(redis, lead, [held]) == [held]  # the taker run again (its worker died)
    assert await redis.zscore("arq:queue", due) is None
    assert await queue.enqueue_unique(redis, "deliver", [queue.Job(due, ())], 60_000) == 0  # taken: the sweep leaves it
    await redis.delete("arq:in-progress:" + due)  # the taker died and its mark expired
    assert await queue.enqueue_unique(redis, "deliver", [queue.Job(due, ())], 60_000) == 1  # orphaned: again
    assert await queue.take_over(redis, lead, [due]) == [due]
    await queue.release(redis, retry={due: 30.0})
    score = await redis.zscore("arq:queue", due)
    assert score is not None and score > time.time() * 1000 + 25_000  # back at its retry time
    assert not await redis.exists("arq:in-progress:" + due)
    await queue.release(redis, done=[held])
    assert not await redis.exists("arq:job:" + held, "arq:in-progress:" + held)
    await redis.aclose()


async def _split(tmp_path: Path, redis: EmbeddedRedis, fake: FakePluralKit, creds: dict[str, str], sink: SinkServer,
                 server: dict[str, Any] | None = None) -> tuple[Deployment, Path]:
    """A config for separate processes (shared Redis, a webhook sink), one UPDATE_SYSTEM
    already answered 200 by the receiver and queued."""
    dep = await deploy(tmp_path, redis, fake, [{**creds, "mode": "webhook"}], server=server or {},
                       redis={"url": redis.url}, sinks=[{"type": "webhook", "url": sink.url}])
    cfg = dep.config_file
    async with AsyncTestClient(app=dep.app()) as client:
        content = body("UPDATE_SYSTEM", creds["signing_token"], creds["system_id"], None, {"name": "Renamed"})
        assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200
    return dep, cfg


def _worker(cfg: Path) -> subprocess.Popen[bytes]:
    return pkrelay_process("worker", cfg)


@pytest.mark.fault
async def test_an_event_whose_worker_is_killed_mid_job_is_delivered_within_two_minutes(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, system_creds: dict[str, str]
) -> None:
    """SPEC's bound, with real processes: SIGKILL while enriching, then a new worker."""
    sink = SinkServer()
    sink.start()
    dep, cfg = await _split(tmp_path, redis_server, fake_pk, system_creds, sink)
    redis = queue.connect(redis_server.url)

    async def delivered() -> list[Received]:
        return sink.received

    async def ingesting() -> list[bytes]:
        return [k for k in await redis.keys("arq:in-progress:*") if not k.startswith(b"arq:in-progress:cron:")]

    fake_pk.delay = 60  # the first worker hangs in enrichment's API call...
    first = _worker(cfg)
    second = None
    try:
        await until(ingesting, 30, "the worker to start the job")
        first.kill()  # ...and dies there
        first.wait()
        fake_pk.delay = 0
        second = _worker(cfg)
        started = time.monotonic()
        await until(delivered, 150, "the delivery")
        assert time.monotonic() - started < 120
        [row] = await dep.logged()
        assert row.data == {"name": "Renamed"} and row.entity["name"] == "Renamed"
        assert {r.headers["webhook-id"] for r in sink.received} == {row.id}
    finally:
        if second is not None:
            second.terminate()
            second.wait(30)
        await redis.aclose()
        sink.stop()


@pytest.mark.fault
async def test_deliveries_sent_together_whose_worker_is_killed_are_delivered_within_two_minutes(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, system_creds: dict[str, str]
) -> None:
    """One job sends a run of deliveries; SIGKILL while they are in flight, then a new
    worker: each is delivered within SPEC's bound, none is left pending."""
    hang = threading.Event()
    hang.set()
    sink = SinkServer(respond=lambda n: 500 if hang.is_set() and threading.Event().wait(60) else 200)
    sink.start()
    dep, cfg = await _split(tmp_path, redis_server, fake_pk, system_creds, sink)
    async with AsyncTestClient(app=dep.app()) as client:
        for i in range(4):
            content = body("UPDATE_SYSTEM", system_creds["signing_token"], system_creds["system_id"], None,
                           {"name": f"n{i}"})
            assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200

    async def in_flight() -> bool:
        return len(sink.received) >= 2  # more than one of them at once: a run, not one job each

    first = _worker(cfg)
    second = None
    try:
        await until(in_flight, 30, "the deliveries to be in flight")
        first.kill()
        first.wait()
        hang.clear()
        killed_at = len(sink.received)
        second = _worker(cfg)
        started = time.monotonic()
        ids = {r.id for r in await dep.logged()}

        async def all_delivered() -> bool:
            return {r.headers["webhook-id"] for r in sink.received[killed_at:]} == ids

        await until(all_delivered, 150, "every delivery")
        assert time.monotonic() - started < 120 and len(ids) == 5
    finally:
        if second is not None:
            second.terminate()
            second.wait(30)
        sink.stop()


async def test_a_worker_apart_from_the_receiver_serves_its_own_metrics(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, system_creds: dict[str, str]
) -> None:
    sink = SinkServer()
    sink.start()
    port = free_port()
    _, cfg = await _split(tmp_path, redis_server, fake_pk, system_creds, sink, {"worker_metrics_port": port})
    worker = _worker(cfg)

    async def delivered() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                page = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return False
        samples = [sample for family in text_string_to_metric_families(page) for sample in family.samples]
        return any(sample.name == "pkrelay_deliveries_total" and sample.labels["outcome"] == "delivered"
                   and sample.value == 1 for sample in samples)

    try:
        await until(delivered, 30, "the worker's /metrics to count the delivery")
        assert len(sink.received) == 1
    finally:
        worker.terminate()
        worker.wait(30)
        sink.stop()
