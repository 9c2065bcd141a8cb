"""A restart of the Redis-compatible server costs seconds, not job timeouts.

Real processes: `pkrelay worker` as its own process, the receiver in this one, the
embedded server stopped and started again on the same port (its append-only file
keeps the queue), a webhook sink that notes when each event arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from redis.exceptions import LockError

from pkrelay import keys, queue
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.system_lock import Lease, SystemLock
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.servers import pkrelay_process
from tests.sink_server import SinkServer
from tests.waiting import until

BURST = 150


async def _setup(tmp_path: Path, redis: EmbeddedRedis, fake: FakePluralKit, creds: dict[str, str],
                 sink: SinkServer) -> Deployment:
    return await deploy(tmp_path, redis, fake, [{**creds, "mode": "webhook"}], redis={"url": redis.url},
                        sinks=[{"type": "webhook", "url": sink.url}])


def _worker(dep: Deployment, name: str) -> subprocess.Popen[bytes]:
    """`pkrelay worker`, its log kept beside the test's files for a failure's post-mortem."""
    return pkrelay_process("worker", dep.config_file, (dep.config_file.parent / f"{name}.log").open("wb"))


def _names(sink: SinkServer) -> dict[str, float]:
    """The first arrival (perf_counter) of each delivered event, by its data's name."""
    arrived: dict[str, float] = {}
    for received in sink.received:
        arrived.setdefault(json.loads(received.body)["data"]["name"], received.at)
    return arrived


@pytest.mark.parametrize("down_s", [0.5, 12.0], ids=["blip", "outage"])
@pytest.mark.fault
async def test_a_redis_restart_mid_burst_delays_no_event_more_than_10_s(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, system_creds: dict[str, str], down_s: float
) -> None:
    """A blip is ridden out by each command's retries; a longer outage by the worker
    reconnecting (and running again at once the jobs it could not finish)."""
    sink = SinkServer()
    sink.start()
    dep = await _setup(tmp_path, redis_server, fake_pk, system_creds, sink)
    worker = _worker(dep, "worker")
    sent: dict[str, float] = {}
    back_at = 0.0
    try:
        async with AsyncTestClient(app=dep.app()) as client:
            dispatcher = FakeDispatcher(client, "/dispatch")

            async def send(i: int) -> None:
                content = body("UPDATE_SYSTEM", system_creds["signing_token"], system_creds["system_id"], None,
                               {"name": f"n{i}"})
                sent[f"n{i}"] = time.perf_counter()
                assert (await dispatcher.send(content)).status_code == 200

            async def restart() -> None:
                nonlocal back_at
                await asyncio.to_thread(redis_server.stop)  # SIGTERM: it flushes its AOF and exits...
                await asyncio.sleep(down_s)
                await asyncio.to_thread(redis_server.start)  # ...and is back on the same port
                back_at = time.perf_counter()

            await send(-1)  # the worker is up and delivering before the burst starts
            await until(lambda: "n-1" in _names(sink), 60, "the first delivery")
            restarting = None
            for i in range(BURST):  # meanwhile the receiver spools what Redis cannot take
                if i == BURST // 3:
                    restarting = asyncio.create_task(restart())
                await send(i)
                await asyncio.sleep(0.02)
            assert restarting is not None
            await restarting
            await until(lambda: len(_names(sink)) == BURST + 1, 120, "every delivery")
        arrived = _names(sink)
        late = {name: round(at - max(sent[name], back_at), 1) for name, at in arrived.items()
                if at - max(sent[name], back_at) > 10}
        assert late == {}, f"{len(late)} events arrived more than 10 s after Redis was back: {late}"
        assert worker.poll() is None, "the worker exited"
        assert len(await dep.logged()) == BURST + 1
    finally:
        worker.terminate()
        worker.wait(30)
        sink.stop()


@pytest.mark.fault
async def test_a_worker_killed_holding_a_system_lock_holds_the_system_seconds_not_a_minute(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, system_creds: dict[str, str]
) -> None:
    sink = SinkServer()
    sink.start()
    dep = await _setup(tmp_path, redis_server, fake_pk, system_creds, sink)
    redis = queue.connect(redis_server.url)
    fake_pk.delay = 60  # the first worker hangs in enrichment, holding the system's lock...
    first = _worker(dep, "first")
    second = None
    try:
        async with AsyncTestClient(app=dep.app()) as client:
            dispatcher = FakeDispatcher(client, "/dispatch")

            async def send(name: str) -> None:
                content = body("UPDATE_SYSTEM", system_creds["signing_token"], system_creds["system_id"], None,
                               {"name": name})
                assert (await dispatcher.send(content)).status_code == 200

            await send("held")
            await until(lambda: redis.exists(keys.system_lock_name("home")), 30, "the worker to take the lock")
            first.kill()  # ...and dies there: nothing releases it
            first.wait()
            fake_pk.delay = 0
            second = _worker(dep, "second")
            await send("next")
            started = time.monotonic()
            names = await until(lambda: {"held", "next"} <= set(_names(sink)), 60,
                                "both events delivered")
            assert names
            assert time.monotonic() - started < 20
        assert [r.data["name"] for r in await dep.logged()] == ["held", "next"]  # in order, once each
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        await redis.aclose()
        sink.stop()


async def test_a_system_lock_lasts_while_its_holder_works_and_stops_the_holder_once_lost(
    redis_server: EmbeddedRedis,
) -> None:
    redis = queue.connect(redis_server.url)
    name = keys.system_lock_name("home")
    lease = Lease(seconds=2, renew_every_s=0.2, margin_s=0.6)  # the default's shape, five times shorter
    lock = SystemLock(redis, "home", lease)
    wrote: list[str] = []

    async def hold() -> None:
        assert await lock.acquire(blocking_timeout=1)
        try:
            await asyncio.sleep(lease.seconds + 2)  # longer than the lease: renewed meanwhile
            assert not await SystemLock(redis, "home", lease).acquire(blocking_timeout=0.2)
            await redis.set(name, b"another worker")  # as if it had lapsed and been taken
            await asyncio.sleep(lease.seconds)
            wrote.append("after losing the lock")
        finally:
            with contextlib.suppress(LockError):
                await lock.release()

    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(hold())
        assert wrote == []
        assert await redis.get(name) == b"another worker"  # and the loser did not release the winner's lock
    finally:
        await redis.aclose()
