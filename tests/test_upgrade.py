"""Upgrading in place: the previous release's data directory and config under this release.

Keep this test for every release: bump PREVIOUS to the last release's commit (the
commit the release was cut from), and keep REMOVED_KEY naming a key that release (or
an earlier one) accepted and this one no longer uses, while pkrelay/config/removed.py
still forgives it.

The previous release is installed from its git commit into its own venv and started
as `pkrelay run` on a data directory, with a webhook sink that is down; 20 dispatches
are logged with their deliveries pending (tried, failed). It is stopped with SIGTERM,
this release is started on the same data directory and config (plus REMOVED_KEY), the
sink comes up, and then: every event logged before keeps its id, every pending
delivery arrives exactly once, under its event's id as `webhook-id`, validly signed,
within BOUND_S of the sink coming up; the schema was migrated; the removed key gave one
WARNING and did not stop the start. `pytest -m upgrade` (.ci/run runs it).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from pkrelay.redis_server import free_port
from tests.deployment import add_to_config, webhook_sink, write_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.servers import clean_env, ready
from tests.sink_server import SinkServer
from tests.waiting import wait_until

pytestmark = pytest.mark.upgrade

PREVIOUS = "2f14b00"  # release 0.1.0's last commit
# Accepted by an earlier release (it was removed in 4815aed, before PREVIOUS, whose own
# schema refuses it: so it is added to the config for this release's start only).
REMOVED_KEY = ("pluralkit", "message_rate")
EVENTS = 20
BOUND_S = 20.0  # every pending delivery arrives within this many seconds of the sink coming up
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `pkrelay` command of release PREVIOUS, in its own venv."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("the upgrade test needs this repository's git history (git and .git)")
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.fail(f"commit {PREVIOUS} (the previous release) is not in this clone: fetch its history "
                    "(a shallow clone lacks it)")
    root = tmp_path_factory.mktemp("previous")
    src, venv = root / "src", root / "venv"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, f"installing {PREVIOUS} failed:\n{pip.stdout}\n{pip.stderr}"
    return venv / "bin" / "pkrelay"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start() -> Iterator[object]:
    """start(command, config, port, log): `COMMAND run --config config` until /readyz answers;
    whatever is still running is stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def run(command: list[str], config: Path, port: int, log: Path) -> Running:
        # Started from the config's directory: its children run `python -m pkrelay`, which
        # would import this checkout's pkrelay from the current directory.
        with log.open("wb") as out:
            proc = subprocess.Popen([*command, "run", "--config", str(config)], env=clean_env(),
                                    stdout=out, stderr=subprocess.STDOUT, cwd=config.parent)
        started.append(proc)
        running = Running(proc, log)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{command} run exited ({proc.returncode}) before it was ready:\n"
                                     f"{running.output()}")
            return ready(port)

        wait_until(up, 60, f"{command} run to answer /readyz on {port}")
        return running

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'pkrelay.db'}?mode=ro", uri=True, timeout=10)


def _query(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    if not (data_dir / "pkrelay.db").exists():
        return []
    with _db(data_dir) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # a table not created yet, or locked by a writer
            return []


def _stop(running: Running) -> None:
    running.proc.send_signal(signal.SIGTERM)
    code = running.proc.wait(timeout=60)
    assert code == 0, f"exit {code} on SIGTERM:\n{running.output()}"


def test_previous_release_data_dir_and_config_upgrade_in_place(
    tmp_path: Path, previous_release: Path, fake_pk: FakePluralKit, fake_system: FakeSystem,
    system_creds: dict[str, str], start: object,
) -> None:
    run = start
    assert callable(run)
    port = free_port()
    sink = SinkServer()  # its port is taken now; nobody listens on it until sink.start()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "systems": [{**system_creds, "mode": "webhook"}],
        "server": {"port": port},
        "pluralkit": {"api_base_url": fake_pk.base_url},
        # Short retries keep the test short; they are settings both releases have.
        "delivery": {"retry_first_s": 1, "retry_max_s": 2},
        "sinks": [webhook_sink(sink.url, secret)],
    })
    data_dir = tmp_path / "data"

    # The previous release: 20 events logged, their deliveries tried and pending.
    old = run([str(previous_release)], cfg, port, tmp_path / "previous.log")

    async def send() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            dispatcher = FakeDispatcher(client, "/dispatch")
            assert await dispatcher.register(system_creds["signing_token"], system_creds["system_id"])
            codes = []
            for i in range(EVENTS):
                fake_system.system["name"] = f"n{i}"  # the API shows the change too
                r = await dispatcher.send(body("UPDATE_SYSTEM", system_creds["signing_token"],
                                               system_creds["system_id"], None, {"name": f"n{i}"}))
                codes.append(r.status_code)
            return codes

    assert asyncio.run(send()) == [200] * EVENTS

    def pending() -> int:
        rows = _query(data_dir, "SELECT count(*) FROM deliveries WHERE status = 'pending' AND attempts >= 1")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    wait_until(lambda: pending() == EVENTS, 60, f"{EVENTS} pending deliveries, each tried once",
               seen=lambda: (_query(data_dir, "SELECT status, attempts, count(*) FROM deliveries "
                                              "GROUP BY status, attempts"), old.output()[-2000:]))
    _stop(old)
    before = {str(r[0]) for r in _query(data_dir, "SELECT id FROM events")}
    pending_ids = {str(r[0]) for r in _query(data_dir, "SELECT event_id FROM deliveries WHERE status = 'pending'")}
    assert len(before) == EVENTS and pending_ids == before
    assert _query(data_dir, "SELECT version_num FROM alembic_version") == [("0004",)]

    # This release, on the same data directory and config, plus a key an earlier release had.
    add_to_config(cfg, {REMOVED_KEY[0]: {REMOVED_KEY[1]: 5}})
    new = run([sys.executable, "-m", "pkrelay"], cfg, port, tmp_path / "this.log")
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"
    sink.start()
    up_at = time.perf_counter()
    try:
        wait_until(lambda: {r.headers.get("webhook-id") for r in sink.received} >= before, BOUND_S,
                   f"the {EVENTS} pending deliveries within {BOUND_S:g} s of the sink coming up",
                   seen=lambda: (len(sink.received), new.output()[-2000:]))
        last = max(r.at for r in sink.received) - up_at
        time.sleep(3)  # a window for a duplicate to show up (retries are 1-2 s apart here)
        received = list(sink.received)
    finally:
        sink.stop()

    ids = [r.headers["webhook-id"] for r in received]
    assert sorted(ids) == sorted(before), f"each pending delivery exactly once, under its event's id: {ids}"
    verifier = Webhook(secret)
    for r in received:
        verifier.verify(r.body, r.headers)  # raises on a bad signature
    assert last <= BOUND_S

    _stop(new)
    after = {str(r[0]) for r in _query(data_dir, "SELECT id FROM events")}
    assert before <= after, "every event logged by the previous release keeps its id"
    assert _query(data_dir, "SELECT count(*) FROM deliveries WHERE status != 'delivered'") == [(0,)]
    # The migration ran: the state table's primary key is (system_id, kind, key) (0005).
    with _db(data_dir) as conn:
        key = sorted((row[5], row[1]) for row in conn.execute("PRAGMA table_info(state)") if row[5])
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert [name for _, name in key] == ["system_id", "kind", "key"]
    head = max(p.name.split("_")[0] for p in (REPO / "pkrelay" / "migrations" / "versions").glob("[0-9]*.py"))
    assert version == [(head,)]
    warnings = [line for line in new.output().splitlines() if "WARNING" in line and "message_rate" in line]
    assert len(warnings) == 1, new.output()
    assert "`pluralkit.message_rate`" in warnings[0] and "line" in warnings[0]
    print(f"upgrade: {EVENTS} pending deliveries delivered {last:.2f} s after the sink came up")
