"""`pkrelay run` as a user starts it: one command, a process tree, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from pkrelay import config
from pkrelay import db as pkdb
from pkrelay.redis_server import free_port
from pkrelay.store import eventlog
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.servers import pkrelay_run, ready
from tests.waiting import wait_until


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
    cfg = write_config(tmp_path / "pkrelay.toml", {"systems": [system_creds], "server": {"port": port},
                                                   "pluralkit": {"api_base_url": fake_pk.base_url}})
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

    wait_until(lambda: logged() == 5, 30, "the worker to log 5 events")

    # A child that dies is restarted.
    worker.kill()
    wait_until(lambda: (w := _child(run, "worker")) is not None and w.pid != worker.pid, 30, "a new worker")
    tree.append(_child(run, "worker"))

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for child in tree:
        assert child is not None
        wait_until(lambda c=child: not c.is_running() or c.status() == psutil.STATUS_ZOMBIE, 5, f"{child} to exit")
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
    wait_until(lambda: (r := _child(run, "valkey-server")) is not None and r.pid != redis.pid, 30, "Redis restart")
    wait_until(lambda: ready(port), 30, "readiness after the Redis restart")


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """Ctrl-C, as a user stops it; the exit status must be 0. Its whole output."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    return proc.stdout.read().decode() if proc.stdout else ""


def test_run_with_a_relative_data_dir_starts_from_anywhere(tmp_path: Path) -> None:
    """The starter config's `data_dir = "./data"` is the config file's directory, wherever we start."""
    port = free_port()
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cfg = write_config(tmp_path / "etc" / "pkrelay.toml", {"data_dir": "./data", "server": {"port": port}})
    with pkrelay_run(cfg, port, output=subprocess.PIPE, cwd=tmp_path / "elsewhere") as proc:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        _stop(proc)
    assert (tmp_path / "etc" / "data" / "pkrelay.db").exists()
    assert not (tmp_path / "elsewhere" / "data").exists()


def test_idle_run_is_quiet_and_starts_with_one_summary(
    tmp_path: Path, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "systems": [{**system_creds, "mode": "webhook"}], "server": {"port": port},
        "pluralkit": {"api_base_url": fake_pk.base_url},
        "sinks": [{"name": "ha-front", "type": "webhook", "url": "http://127.0.0.1:9/hook"}]})
    with pkrelay_run(cfg, port, output=subprocess.PIPE) as proc:
        time.sleep(5)  # a window to count lines in, not a wait for a condition
        output = _stop(proc)
    lines = output.splitlines()
    # The summary (6 lines), "received SIGINT", "stopped"; before: ~4 lines a second.
    assert len(lines) <= 10, output
    assert f"config: {cfg}" in output and f"data directory: {tmp_path / 'data'}" in output
    assert "home (webhook; signing token set, API token set)" in output
    assert "sinks: ha-front" in output
    assert "dispatch URL: unknown, server.public_url is not set" in output
    assert system_creds["signing_token"] not in output and system_creds["api_token"] not in output


def test_a_second_run_on_the_same_data_dir_stops_at_once(
    running: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, _, cfg = running
    marker = cfg.parent / "data" / "redis" / "url"
    url = marker.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
    second = subprocess.run([sys.executable, "-m", "pkrelay", "run", "--config", str(cfg)], env=env,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert f"another pkrelay run (pid {proc.pid}) is using" in second.stderr
    assert marker.read_text() == url  # the running one's embedded server is still the one named


def test_run_stops_with_a_reason_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path / "pkrelay.toml", {"server": {"port": port}})
        env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
        done = subprocess.run([sys.executable, "-m", "pkrelay", "run", "--config", str(cfg)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "stopping" in done.stderr
