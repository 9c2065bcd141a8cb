"""Start-up beside services that are not up yet: retry with a clear line, migrate once."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from pkrelay import __version__, config, db, startup
from pkrelay.redis_server import EmbeddedRedis, free_port
from tests import postgres
from tests.deployment import add_to_config, write_config
from tests.servers import pkrelay_process
from tests.waiting import until

NOT_YET = "database not reachable yet (ConnectionRefusedError), retrying in"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _schema_version(url: str) -> str | None:
    engine = db.create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
    finally:
        await engine.dispose()


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


@pytest.mark.skipif(bool(postgres.unavailable_reason()), reason=postgres.unavailable_reason() or "")
async def test_serve_and_worker_wait_for_a_postgresql_that_starts_late(tmp_path: Path,
                                                                       redis_server: EmbeddedRedis) -> None:
    """The first `docker compose up`: PostgreSQL is still initialising when pkrelay starts."""
    cluster = postgres.Cluster()  # its port is chosen, nothing listens there yet
    port, metrics_port = free_port(), free_port()
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "database": {"url": cluster.url()}, "server": {"port": port, "worker_metrics_port": metrics_port},
        "redis": {"url": redis_server.url}})
    logs = {name: tmp_path / f"{name}.log" for name in ("serve", "worker")}
    procs = [pkrelay_process(name, cfg, log.open("wb")) for name, log in logs.items()]
    try:
        for name, log in logs.items():
            await until(lambda: NOT_YET in log.read_text(), 30, f"{name} to say it waits")
        cluster.start()
        await until(lambda: asyncio.to_thread(_answers, f"http://127.0.0.1:{port}/readyz"), 60, "the receiver")
        await until(lambda: asyncio.to_thread(_answers, f"http://127.0.0.1:{metrics_port}/metrics"), 60,
                    "the worker")
        assert all(proc.poll() is None for proc in procs)
        assert await _schema_version(cluster.url())
    finally:
        _stop(*procs)
        cluster.stop()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_migrators_on_a_fresh_database_all_succeed(tmp_path: Path, backend: str,
                                                                    request: pytest.FixtureRequest) -> None:
    """Every replica migrates on start; they take turns instead of racing."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else ""
    cfg = write_config(tmp_path / "pkrelay.toml", {"database": {"url": url}})
    procs = [pkrelay_process("migrate", cfg, subprocess.PIPE) for _ in range(3)]
    outputs = [proc.communicate(timeout=60)[0].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert all("database schema is up to date" in out for out in outputs)
    assert asyncio.run(_schema_version(url or f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pkrelay.db'}"))


def test_a_database_that_never_comes_gives_one_line_after_the_wait(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "database": {"url": f"postgresql+asyncpg://pkrelay:hunter2secret@127.0.0.1:{port}/pkrelay"},
        "server": {"startup_wait_s": 2}})
    started = time.monotonic()
    proc = pkrelay_process("migrate", cfg, subprocess.PIPE)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 1
    assert 1.5 < time.monotonic() - started < 30
    assert out.count(NOT_YET) >= 2  # one WARNING line per attempt
    last = out.strip().splitlines()[-1]
    assert last.startswith("pkrelay migrate: database not reachable after 2 s (ConnectionRefusedError")
    assert "Traceback" not in out and "hunter2secret" not in out


@pytest.mark.skipif(bool(postgres.unavailable_reason()), reason=postgres.unavailable_reason() or "")
def test_a_mistake_waiting_would_not_fix_fails_at_once(tmp_path: Path, pg_cluster: postgres.Cluster) -> None:
    cfg = write_config(tmp_path / "pkrelay.toml", {"database": {"url": pg_cluster.url("no_such_db")}})
    proc = pkrelay_process("migrate", cfg, subprocess.PIPE)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0 and "retrying" not in out and "InvalidCatalogNameError" in out


async def test_the_image_healthcheck_fits_the_role(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    """One image runs every role: its HEALTHCHECK asks a receiver's /healthz and a worker's
    metrics port's /healthz (open when server.metrics_token is set), reading the role
    and --config from the main process's command line."""
    port, metrics_port = free_port(), free_port()
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "server": {"port": port, "worker_metrics_port": metrics_port}, "redis": {"url": redis_server.url}})
    procs = {name: pkrelay_process(name, cfg) for name in ("serve", "worker")}
    cmdlines = {name: Path(f"/proc/{proc.pid}/cmdline") for name, proc in procs.items()}
    saved = {name: tmp_path / f"{name}.cmdline" for name in procs}
    try:
        for name, cmdline in cmdlines.items():
            await until(lambda: asyncio.to_thread(lambda: startup.health(cmdline) is None), 60, f"{name} healthy")
            saved[name].write_bytes(cmdline.read_bytes())
    finally:
        _stop(*procs.values())
    assert startup.health(saved["serve"]) == f"http://127.0.0.1:{port}/healthz does not answer (ConnectError)"
    assert startup.health(saved["worker"]) == \
        f"http://127.0.0.1:{metrics_port}/healthz does not answer (ConnectError)"


def test_the_start_up_summary_begins_with_the_version(tmp_path: Path) -> None:
    from pkrelay.supervisor import summary

    path = tmp_path / "absent.toml"
    assert summary(config.load(path, {}), path).splitlines()[0] == f"pkrelay {__version__} starting"


def test_the_start_up_summary_shows_each_url_once_and_warns_of_an_http_public_url(tmp_path: Path) -> None:
    from pkrelay.supervisor import summary, warnings

    path = write_config(tmp_path / "pkrelay.toml", {
        "server": {"admin_token": "x" * 32, "public_url": "http://relay.example.org/dispatch"},
        "systems": [{"name": "home", "mode": "auto"}, {"name": "away", "mode": "webhook"}]})
    settings = config.load(path, {})
    text = summary(settings, path)
    assert text.count("http://127.0.0.1:8080/\n") + text.endswith("http://127.0.0.1:8080/") == 1  # the dashboard
    for name in ("home", "away"):
        assert text.count(f"http://relay.example.org/dispatch/{name}") == 1, text
    assert text.count("http://127.0.0.1:8080/dispatch") == 1, text
    [warning] = warnings(settings)
    assert "is not https: PluralKit only sends webhooks to https URLs" in warning
    https = write_config(tmp_path / "https.toml", {"server": {"public_url": "https://relay.example.org/dispatch"},
                                                   "systems": [{"name": "home", "mode": "auto"}]})
    assert warnings(config.load(https, {})) == []
    assert "dashboard off: set server.admin_token" in summary(config.load(https, {}), https)


def test_the_healthcheck_does_not_repeat_the_config_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image probes every few seconds; the role gave the removed key's warning once, at its start."""
    cfg = write_config(tmp_path / "pkrelay.toml", {"server": {"port": free_port()}})
    add_to_config(cfg, {"pluralkit": {"message_rate": 10}})  # a previous release's key
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join([b"pkrelay", b"serve", b"--config", str(cfg).encode()]))
    health = startup.health
    monkeypatch.setattr(startup, "health", lambda: health(cmdline))
    caplog.set_level(logging.WARNING)
    assert startup.main(["health"]) == 1  # nothing listens on the port
    assert [r for r in caplog.records if r.name == "pkrelay.config"] == []
    config.load(cfg, {})  # the role's own load still warns
    assert [r.name for r in caplog.records] == ["pkrelay.config"]
