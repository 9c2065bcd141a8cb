"""The spool under faults: a full disk, a corrupt file, a Redis that answers but refuses
writes. Nothing answered 200 is lost or stuck, and a spool that does not drain shows."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
from litestar.testing import AsyncTestClient

from pkrelay import queue
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.retry import Backoff
from receiver.spool import supervise
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.test_receiver import _sample
from tests.waiting import until

MEMBER = "2ee0c92b-bb4f-4a2c-a9a8-3b7d8f3d5f10"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """data/spool on a 256 KiB tmpfs: a real disk that fills up after a few events."""
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(spool)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {mounted.stderr.strip()}")
    yield spool
    subprocess.run(["umount", "-l", str(spool)], check=True)


def _member_update(creds: dict[str, str], name: str, size: int = 0) -> bytes:
    return body("UPDATE_MEMBER", creds["signing_token"], creds["system_id"], MEMBER,
                {"name": name, "description": "d" * size})


def _files(spool: Path, pattern: str = "*.event") -> list[Path]:
    return sorted(spool.glob(pattern))


async def _spool_empty(spool: Path) -> bool:
    return not _files(spool)


async def test_a_full_disk_answers_503_keeps_no_partial_event_and_loses_nothing_answered_200(
    small_disk: Path, deployment: Deployment, redis_server: EmbeddedRedis, system_creds: dict[str, str],
) -> None:
    redis_server.stop()
    accepted: list[str] = []
    async with AsyncTestClient(app=deployment.app()) as client:
        dispatcher = FakeDispatcher(client, "/dispatch")
        refused = None
        for i in range(12):  # ~50 KB each: the 256 KiB disk fills up within six
            response = await dispatcher.send(_member_update(system_creds, f"event {i}", 50_000))
            if response.status_code != 200:
                refused = response
                break
            accepted.append(f"event {i}")
        assert refused is not None and refused.status_code == 503, "the disk never filled up"
        assert "nothing was kept" in refused.json()["error"]
        assert accepted
        assert not _files(small_disk, "*.tmp"), "a failed write left its temporary file"
        for f in _files(small_disk):
            queue.decode(f.read_bytes())  # every event answered 200 is whole on disk
        redis_server.start()
        await until(lambda: _spool_empty(small_disk), 20, "the spool to drain")
        after = await dispatcher.send(_member_update(system_creds, "after"))
        assert after.status_code == 200
    await deployment.work()
    assert [r.data["name"] for r in await deployment.logged()] == [*accepted, "after"]


async def test_an_undecodable_spool_file_is_quarantined_and_the_rest_drain(
    deployment: Deployment, redis_server: EmbeddedRedis, system_creds: dict[str, str], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "evt_01KSTALE000000000000000000.tmp").write_bytes(b"half an ev")  # a crash mid-write
    redis_server.stop()
    async with AsyncTestClient(app=deployment.app()) as client:
        assert not list(spool.glob("*.tmp")), "a stale temporary file survived the start"
        dispatcher = FakeDispatcher(client, "/dispatch")
        for name in ("first", "second", "third"):
            assert (await dispatcher.send(_member_update(system_creds, name))).status_code == 200
        files = sorted(spool.glob("*.event"))
        assert len(files) == 3
        files[1].write_bytes(b"\x93 not what the receiver wrote")
        before = (await client.get("/metrics")).text
        redis_server.start()
        await until(lambda: _spool_empty(spool), 20, "the spool to drain")
        quarantined = list((spool / "quarantine").iterdir())
        assert [f.name for f in quarantined] == [files[1].name]
        assert quarantined[0].read_bytes() == b"\x93 not what the receiver wrote"  # kept for a human
        after = (await client.get("/metrics")).text
        assert _sample(after, "pkrelay_spool_quarantined_total") == \
            _sample(before, "pkrelay_spool_quarantined_total") + 1
        # the drainer lives on: the next outage drains too
        redis_server.stop()
        assert (await dispatcher.send(_member_update(system_creds, "fourth"))).status_code == 200
        redis_server.start()
        await until(lambda: _spool_empty(spool), 20, "the spool to drain again")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(files[1].name in e and "quarantine" in e for e in errors), errors
    await deployment.work()
    assert [r.data["name"] for r in await deployment.logged()] == ["first", "third", "fourth"]


async def test_readyz_and_metrics_show_a_spool_that_does_not_drain_while_redis_answers(
    deployment: Deployment, redis_server: EmbeddedRedis, system_creds: dict[str, str],
) -> None:
    admin = redis.asyncio.Redis.from_url(redis_server.url)
    app = deployment.app()
    app.state.relay.spool.stall_after = 0.5  # the default is 30 s
    async with AsyncTestClient(app=app) as client:
        await admin.config_set("maxmemory", 1)  # PING answers, every write is refused (OOM)
        response = await FakeDispatcher(client, "/dispatch").send(_member_update(system_creds, "kept"))
        assert response.status_code == 200  # spooled

        async def not_ready() -> bool:
            return (await client.get("/readyz")).status_code == 503

        await until(not_ready, 10, "/readyz to fail")
        ready = (await client.get("/readyz")).json()
        assert ready["redis"] == "ok" and ready["spool"].startswith("not draining: 1 events waiting")
        assert _sample((await client.get("/metrics")).text, "pkrelay_spool_oldest_seconds") > 0
        await admin.config_set("maxmemory", 0)

        async def ready_again() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await until(ready_again, 10, "/readyz to recover")
        assert _sample((await client.get("/metrics")).text, "pkrelay_spool_oldest_seconds") == 0
    await admin.aclose()
    await deployment.work()
    assert [r.data["name"] for r in await deployment.logged()] == ["kept"]


async def test_a_background_task_that_raises_is_restarted_with_backoff() -> None:
    runs: list[float] = []

    async def flaky() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) < 3:
            raise RuntimeError("a bug")

    await asyncio.wait_for(supervise("flaky", flaky, Backoff(base=0.05, cap=1.0, jitter=False)), 10)
    assert len(runs) == 3
    assert runs[2] - runs[1] >= runs[1] - runs[0] >= 0.05  # waits, and longer each time
