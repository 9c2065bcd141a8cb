"""The production topology as separate processes, as deploy/compose.yaml runs it.

PostgreSQL, an external Redis-compatible server, `pkrelay migrate`, two `pkrelay serve`
and two `pkrelay worker`, the fake PluralKit API and a webhook sink. Dispatches
alternate between the receivers and one worker is SIGKILLed half-way: every 200 is
logged once and delivered under one id, the API's limits hold across all processes,
and one worker at a time polls the system.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from collections import defaultdict
from pathlib import Path

import httpx
import msgspec
import pytest

from pkrelay.redis_server import EmbeddedRedis, free_port
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit, FakeSystem, max_in_any_second
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.servers import pkrelay_process, ready
from tests.sink_server import SinkServer
from tests.waiting import until

DISPATCHES = 60


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.timeout(170)
@pytest.mark.fault
async def test_two_receivers_two_workers_postgresql_one_worker_killed(
    tmp_path: Path, pg_url: str, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem,
    system_creds: dict[str, str],
) -> None:
    sink = SinkServer()
    sink.start()
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "systems": [{**system_creds, "mode": "poll"}], "database": {"url": pg_url},
        "pluralkit": {"api_base_url": fake_pk.base_url}, "redis": {"url": redis_server.url},
        "sinks": [{"type": "webhook", "url": sink.url}]})
    procs: list[subprocess.Popen[bytes]] = []

    def start(command: str, **env: str) -> subprocess.Popen[bytes]:
        proc = pkrelay_process(command, cfg, (tmp_path / f"{command}-{len(procs)}.log").open("wb"), **env)
        procs.append(proc)
        return proc

    try:
        assert start("migrate").wait(60) == 0
        ports = [free_port(), free_port()]
        for port in ports:
            start("serve", PKRELAY_SERVER__PORT=str(port))
        workers = [start("worker"), start("worker")]
        for port in ports:
            await until(lambda: asyncio.to_thread(ready, port), 60, f"the receiver on {port}")

        answers = []
        async with httpx.AsyncClient() as client:
            senders = [FakeDispatcher(client, f"http://127.0.0.1:{port}/dispatch") for port in ports]
            for i in range(DISPATCHES):
                if i == DISPATCHES // 2:
                    workers[0].kill()  # mid-stream, whatever it was doing
                fake_system.system["description"] = f"d{i}"  # the API shows the change, as PluralKit's does
                content = body("UPDATE_SYSTEM", system_creds["signing_token"], system_creds["system_id"], None,
                               {"description": f"d{i}"})
                answers.append((await senders[i % 2].send(content)).status_code)
                await asyncio.sleep(0.05)
        assert answers == [200] * DISPATCHES

        dep = Deployment(cfg, redis_server.url)

        async def all_delivered() -> bool:
            logged = await dep.logged()
            dispatched = [r for r in logged if r.source == "dispatch"]
            return len(dispatched) == DISPATCHES and {r.id for r in logged} <= {
                d.headers["webhook-id"] for d in sink.received}

        # A job of the killed worker runs again after job_timeout + 10 s (70 s).
        await until(all_delivered, 110, "every event logged and delivered")

        def polled(check: str) -> list[float]:
            return sorted(j.at for j in fake_pk.journal if j.path.endswith(check))

        await until(lambda: len(polled("/fronters")) >= 5, 30, "a few poll rounds")
        logged = await dep.logged()

        # Each 200 logged once: one dispatch event per description sent.
        dispatched = [r for r in logged if r.source == "dispatch"]
        assert sorted(r.data["description"] for r in dispatched) == sorted(f"d{i}" for i in range(DISPATCHES))
        # Delivered once per id: repeats (a killed worker's delivery run again) carry the same id and body.
        bodies: dict[str, set[bytes]] = defaultdict(set)
        for delivery in sink.received:
            bodies[delivery.headers["webhook-id"]].add(delivery.body)
        assert set(bodies) == {r.id for r in logged}
        assert all(len(b) == 1 for b in bodies.values())
        assert sorted(msgspec.json.decode(next(iter(bodies[r.id])))["data"]["description"] for r in dispatched) \
            == sorted(f"d{i}" for i in range(DISPATCHES))

        # The API's limits held across both workers: no 429, never more than the rate in a second.
        assert [j for j in fake_pk.journal if j.status == 429] == []
        by_scope: dict[tuple[str | None, str | None], list[float]] = defaultdict(list)
        for j in fake_pk.journal:
            by_scope[(j.key, j.scope)].append(j.at)
        assert max(max_in_any_second(times) for times in by_scope.values()) <= 10

        # One poller at a time: each check comes at its cadence (2 s and more), never twice at
        # once as it would from two workers polling the same system.
        for check in ("/fronters", "/switches", "/members", "/groups"):
            times = polled(check)
            assert times and min((b - a for a, b in itertools.pairwise(times)), default=2) > 0.5, check
    finally:
        _stop(procs)
        sink.stop()
