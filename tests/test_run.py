"""`pkrelay run` as a user starts it: one command, a process tree, a clean stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from pkrelay import config, eventlog
from pkrelay import db as pkdb
from pkrelay.redis_server import free_port
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import write_config
from tests.servers import pkrelay_run, ready


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _child(run: psutil.Process, word: str) -> psutil.Process | None:
    for proc in run.children(recursive=True):
        try:
            if word in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


@pytest.fixture
def running(tmp_path: Path, system_creds: dict[str, str],
            fake_pk: FakePluralKit) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    cfg = write_config(tmp_path / "pkrelay.toml", tmp_path / "data", [system_creds],
                       extra=f"\n[server]\nport = {port}\n", api_base_url=fake_pk.base_url)
    with pkrelay_run(cfg, port, output=subprocess.PIPE) as proc:
        yield proc, port, cfg


def test_run_serves_logs_restarts_children_and_stops_cleanly(
    running: tuple[subprocess.Popen[bytes], int, Path], system_creds: dict[str, str], fake_system: FakeSystem
) -> None:
    proc, port, cfg = running
    run = psutil.Process(proc.pid)
    worker, receiver, redis = _child(run, "worker"), _child(run, "serve"), _child(run, "valkey-server")
    assert worker and receiver and redis
    tree = [worker, receiver, redis]

    async def send() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            dispatcher = FakeDispatcher(client, "/dispatch")
            assert await dispatcher.register(system_creds["signing_token"], system_creds["system_id"])
            codes = []
            for i in range(5):
                fake_system.system["name"] = f"n{i}"  # PluralKit's API shows the change too; else polling reports it
                r = await dispatcher.send(body("UPDATE_SYSTEM", system_creds["signing_token"],
                                               system_creds["system_id"], None, {"name": f"n{i}"}))
                codes.append(r.status_code)
            return codes

    assert asyncio.run(send()) == [200] * 5
    settings = config.load(cfg)

    def logged() -> int:
        async def count() -> int:
            engine = pkdb.create_engine(settings.database_url)
            try:
                return len(await eventlog.query(engine, limit=100))
            finally:
                await engine.dispose()
        return asyncio.run(count())

    _wait_for(lambda: logged() == 5, 30, "the worker to log 5 events")

    # A child that dies is restarted.
    worker.kill()
    _wait_for(lambda: (w := _child(run, "worker")) is not None and w.pid != worker.pid, 30, "a new worker")
    tree.append(_child(run, "worker"))

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for child in tree:
        assert child is not None
        _wait_for(lambda c=child: not c.is_running() or c.status() == psutil.STATUS_ZOMBIE, 5, f"{child} to exit")
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert system_creds["signing_token"] not in output


def test_run_restarts_a_crashed_embedded_redis(
    running: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, _ = running
    run = psutil.Process(proc.pid)
    redis = _child(run, "valkey-server")
    assert redis
    redis.kill()
    _wait_for(lambda: (r := _child(run, "valkey-server")) is not None and r.pid != redis.pid, 30, "Redis restart")
    _wait_for(lambda: ready(port), 30, "readiness after the Redis restart")
