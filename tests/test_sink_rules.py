"""The Standard Webhooks sender rules: a 410 disables a sink, so does failing for
delivery.disable_after_h; a disabled sink holds its deliveries until it is enabled (the
CLI, the dashboard); Retry-After holds a sink back (capped at retry_max_s)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from pkrelay import db
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import deploy, webhook_sink
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.harness import Deployment
from tests.proxy_server import ProxyServer
from tests.servers import clean_env
from tests.sink_server import SinkServer
from workers.sweep import sweep
from workers.webhook import retry_after

FAST = RetryPolicy(base=0.05, cap=0.2, window=3600)
ADMIN = "admin-token-for-tests-0123456789"


@pytest.fixture
def served() -> list[SinkServer]:
    servers: list[SinkServer] = []
    yield servers  # type: ignore[misc]
    for server in servers:
        server.stop()


def _serve(servers: list[SinkServer], respond) -> SinkServer:  # type: ignore[no-untyped-def]
    server = SinkServer(respond=respond)
    server.start()
    servers.append(server)
    return server


async def _dispatch(dep: Deployment, creds: dict[str, str], *names: str) -> None:
    async with AsyncTestClient(app=dep.app()) as client:
        for name in names:
            content = body("UPDATE_MEMBER", creds["signing_token"], creds["system_id"], MEMBER_ID, {"name": name})
            assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200


async def _rows(dep: Deployment, table: sa.Table) -> list[sa.Row]:
    engine = db.create_engine(dep.live().current.database_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.select(table))).all())
    finally:
        await engine.dispose()


def _cli(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pkrelay", "sinks", *args, "--config", str(dep.config_file)],
                          capture_output=True, text=True, env=clean_env(), timeout=60)


async def test_a_410_disables_the_sink_which_holds_its_deliveries_until_enabled_then_sends_each_once(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], served: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    gone = [True]
    sink = _serve(served, lambda n: 410 if gone[0] else 204)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], redis={"url": redis_server.url},
                       server={"admin_token": ADMIN}, sinks=[webhook_sink(sink.url, name="hook")])
    await _dispatch(dep, system_creds, "a")
    await dep.work(FAST)
    assert len(sink.received) == 1  # not retried
    await _dispatch(dep, system_creds, "b")
    await dep.work(FAST)
    assert len(sink.received) == 1  # held: not even tried
    assert {d.status for d in await _rows(dep, db.deliveries)} == {"pending"}  # held, not dead-lettered
    assert await dep.job(sweep) == 0  # the sweep leaves held deliveries alone

    listed = _cli(dep, "list")
    assert listed.returncode == 0, listed.stderr
    [shown] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert shown["name"] == "hook" and shown["type"] == "webhook" and shown["state"] == "disabled"
    assert "410" in shown["disabled_reason"] and shown["disabled_at"]
    assert shown["last_error"] == "HTTP 410" and shown["counts"]["pending"] == 2
    async with AsyncTestClient(app=dep.app()) as client:
        [api] = (await client.get("/api/sinks", headers={"Authorization": f"Bearer {ADMIN}"})).json()
        assert (api["name"], api["state"], api["disabled_reason"]) == ("hook", "disabled", shown["disabled_reason"])
        assert (await client.get("/api/sinks")).status_code == 401

    gone[0] = False
    assert _cli(dep, "enable", "nope").returncode == 2
    enabled = _cli(dep, "enable", "hook")
    assert enabled.returncode == 0 and "queued 2 held deliveries" in enabled.stdout, enabled.stderr
    await dep.work(FAST)
    assert sorted(r.body for r in sink.received[1:]) == sorted({r.body for r in sink.received[1:]})  # each once
    assert len(sink.received) == 3
    assert {d.status for d in await _rows(dep, db.deliveries)} == {"delivered"}
    [state] = await _rows(dep, db.sinks)
    assert state.state == "active" and state.disabled_reason is None and state.last_success_at is not None


async def test_the_dashboard_shows_a_disabled_sink_and_resumes_it(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], served: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    gone = [True]
    sink = _serve(served, lambda n: 410 if gone[0] else 200)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], server={"admin_token": ADMIN},
                       sinks=[webhook_sink(sink.url, name="hook")])
    await _dispatch(dep, system_creds, "a")
    await dep.work(FAST)
    async with AsyncTestClient(app=dep.app()) as client:
        assert (await client.post("/login", data={"token": ADMIN, "next": "/deliveries"})).status_code in (200, 303)
        page = (await client.get("/deliveries")).text
        assert "Disabled since" in page and "410 Gone" in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        assert (await client.post("/sinks/enable", data={"sink": "hook"})).status_code == 403  # no CSRF token
        gone[0] = False
        answer = await client.post("/sinks/enable", data={"sink": "hook", "csrf": csrf.group(1)})
        assert answer.status_code in (200, 303) and "1 delivery queued again" in answer.text
    await dep.work(FAST)
    assert [r.status for r in await _rows(dep, db.deliveries)] == ["delivered"]
    assert len(sink.received) == 2


async def test_a_sink_whose_every_attempt_failed_for_disable_after_h_is_disabled(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], served: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    sink = _serve(served, lambda n: 500)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], delivery={"disable_after_h": 48},
                       sinks=[webhook_sink(sink.url, name="down")])
    engine = db.create_engine(dep.live().current.database_url)
    async with engine.begin() as conn:  # failing for 49 hours already
        await conn.execute(db.sinks.insert().values(key="down", state="active",
                                                    failing_since=datetime.now(UTC) - timedelta(hours=49)))
    await engine.dispose()
    await _dispatch(dep, system_creds, "a")
    await dep.work(FAST)
    assert len(sink.received) == 1
    [state] = await _rows(dep, db.sinks)
    assert state.state == "disabled" and state.disabled_reason.startswith("every attempt failed for 48 h")
    assert [d.status for d in await _rows(dep, db.deliveries)] == ["pending"]


async def test_a_success_keeps_a_long_failing_sink_active(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], served: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    sink = _serve(served, lambda n: 500 if n == 1 else 200)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url, name="s")])
    engine = db.create_engine(dep.live().current.database_url)
    async with engine.begin() as conn:  # failing for 100 of the default 120 hours
        await conn.execute(db.sinks.insert().values(key="s", state="active",
                                                    failing_since=datetime.now(UTC) - timedelta(hours=100)))
    await engine.dispose()
    await _dispatch(dep, system_creds, "a")
    await dep.work(FAST)
    [state] = await _rows(dep, db.sinks)
    assert state.state == "active" and state.failing_since is None and len(sink.received) == 2


async def test_retry_after_holds_the_sink_back_at_least_that_long_and_at_most_retry_max_s(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], served: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    far = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    answers = {1: (429, {"Retry-After": "2"}, b""), 2: (503, {"Retry-After": far}, b"")}
    sink = _serve(served, lambda n: answers.get(n, 200))
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    await _dispatch(dep, system_creds, "a")
    await dep.work(RetryPolicy(base=0.05, cap=2.5, window=3600))
    first, second, third = (r.at for r in sink.received)
    assert second - first >= 2.0  # the backoff alone: 25-50 ms
    assert 2.5 <= third - second < 4.5  # an hour asked, retry_max_s given
    assert [d.status for d in await _rows(dep, db.deliveries)] == ["delivered"]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("120") == 120.0
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 <= (retry_after(in_a_minute) or 0) <= 60
    assert retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0.0
    assert retry_after(None) is None and retry_after("soon") is None


async def test_sink_requests_go_through_http_proxy_unless_no_proxy_names_the_host(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], served: list[SinkServer],
    fake_pk: FakePluralKit, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    proxy = ProxyServer()
    await proxy.start()
    try:
        sink = _serve(served, lambda n: 200)
        url = sink.url.replace("127.0.0.1", "localhost")  # the fake API stays on 127.0.0.1, direct
        dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(url)])
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://relay:p%40ss@"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await _dispatch(dep, system_creds, "a")
        await dep.work(FAST)
        assert len(sink.received) == 1 and proxy.seen == [f"POST {url} HTTP/1.1"]
        assert proxy.auth == ["Basic " + base64.b64encode(b"relay:p@ss").decode()]

        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # read when the worker starts
        await _dispatch(dep, system_creds, "b")
        await dep.work(FAST)
        assert len(sink.received) == 2 and len(proxy.seen) == 1  # straight to the sink
    finally:
        await proxy.stop()
