"""The failed-auth limit, server-side logout, the security headers, /metrics' token and labels."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from pkrelay import config
from pkrelay.redis_server import EmbeddedRedis, free_port
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import deploy, webhook_sink
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.harness import Deployment
from tests.sink_server import SinkServer
from workers import metrics as worker_metrics

ADMIN = "admin-token-for-tests-0123456789"
STREAM = "stream-token-for-tests-987654321"
METRICS = "metrics-token-for-tests-24681357"
FAST = RetryPolicy(base=0.05, cap=0.2, window=3600)


async def _deployment(tmp_path: Path, redis: EmbeddedRedis, creds: dict[str, str], fake: FakePluralKit,
                      server: dict[str, object] | None = None,
                      sinks: list[dict[str, object]] | None = None) -> Deployment:
    return await deploy(tmp_path, redis, fake, [creds], sinks=sinks or [],
                        server={"admin_token": ADMIN, "stream_token": STREAM, **(server or {})})


async def _login(client: AsyncTestClient, token: str) -> httpx.Response:
    return await client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)


async def _unblocked(client: AsyncTestClient) -> None:
    """The window shortened (as if a minute went by): the failures leave it."""
    client.app.state.auth_limit.window = 0.2
    await asyncio.sleep(0.3)


async def test_the_eleventh_wrong_login_in_a_minute_is_refused_even_with_the_right_token(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk)
    async with AsyncTestClient(app=dep.app()) as client:
        for attempt in range(10):
            assert (await _login(client, f"guess-{attempt}")).status_code == 401
        blocked = await _login(client, "guess-10")
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert "Too many failed logins" in blocked.text and "text/html" in blocked.headers["content-type"]
        right = await _login(client, ADMIN)  # not confirmed while blocked
        assert right.status_code == 429 and "set-cookie" not in right.headers
        # Another replica (the same Redis) counts the same failures.
        async with AsyncTestClient(app=dep.app()) as replica:
            assert (await _login(replica, ADMIN)).status_code == 429
        await _unblocked(client)
        accepted = await _login(client, ADMIN)
        assert accepted.status_code == 303 and "pkrelay_session" in accepted.headers["set-cookie"]


async def test_the_limit_holds_in_memory_while_redis_is_down(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk)
    async with AsyncTestClient(app=dep.app()) as client:
        redis_server.stop()
        for attempt in range(10):
            assert (await _login(client, f"guess-{attempt}")).status_code == 401
        assert (await _login(client, ADMIN)).status_code == 429
        await _unblocked(client)
        assert (await _login(client, ADMIN)).status_code == 303  # logins are not refused for want of Redis


async def test_the_eleventh_wrong_bearer_token_on_the_api_is_refused(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk, server={"metrics_token": METRICS})
    async with AsyncTestClient(app=dep.app()) as client:
        assert (await client.get("/api/events")).status_code == 401  # no token: no guess, not counted
        wrong = [("/api/events", "a"), ("/api/systems", "b"), ("/metrics", "c"), ("/api/stream", "d")]
        for attempt in range(10):
            path, guess = wrong[attempt % len(wrong)]
            answer = await client.get(path, headers={"Authorization": f"Bearer {guess}{attempt}"})
            assert answer.status_code == 401, path
        blocked = await client.get("/api/events", headers={"Authorization": "Bearer guess-10"})
        assert blocked.status_code == 429 and 1 <= int(blocked.headers["retry-after"]) <= 60
        assert blocked.json()["status_code"] == 429
        for path, token in (("/api/events", ADMIN), ("/metrics", METRICS), ("/api/stream", STREAM)):
            answer = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 429, path  # the right tokens too, while blocked
        assert (await _login(client, ADMIN)).status_code == 429  # one count for the dashboard and the API
        await _unblocked(client)
        assert (await client.get("/api/events", headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 200


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


async def test_logout_ends_the_session_for_its_cookie_and_csrf_token(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    sink = SinkServer()
    sink.start()
    try:
        dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk, sinks=[webhook_sink(sink.url)])
        async with AsyncTestClient(app=dep.app()) as client, AsyncTestClient(app=dep.app()) as replica:
            assert (await _login(client, ADMIN)).status_code == 303
            cookie = client.cookies["pkrelay_session"]
            page = (await client.get("/deliveries")).text
            csrf = _csrf(page)
            key = re.search(r'name="sink" value="([^"]+)"', page)
            assert key
            assert (await client.post("/logout", data={"csrf": csrf}, follow_redirects=False)).status_code == 303
            for c in (client, replica):  # the copied cookie, on this receiver and on another
                c.cookies.set("pkrelay_session", cookie)
                answer = await c.get("/deliveries", follow_redirects=False)
                assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
                assert (await c.get("/events/live")).status_code == 401
                refused = await c.post("/deliveries/test", data={"sink": key.group(1), "csrf": csrf},
                                       follow_redirects=False)
                assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
            assert await dep.logged() == []  # no test event was created
    finally:
        sink.stop()


async def test_pages_and_static_files_carry_a_content_security_policy(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk)
    async with AsyncTestClient(app=dep.app()) as client:
        answers = [await client.get("/login"), await client.get("/static/dashboard.css"),
                   await client.get("/static/live.js"), await client.get("/", follow_redirects=False)]
        assert (await _login(client, ADMIN)).status_code == 303
        answers += [await client.get(p) for p in ("/", "/events", "/deliveries", "/connect", "/events/nope")]
        for answer in answers:
            csp = answer.headers.get("content-security-policy", "")
            assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp, answer.url
            assert "unsafe-inline" not in csp
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["x-frame-options"] == "SAMEORIGIN"
            assert answer.headers["referrer-policy"] == "same-origin"
        for page in answers[-5:-1]:
            assert "<script>" not in page.text and "style=" not in page.text and " on" not in page.text.split(">")[0]
        api = await client.get("/api/events", headers={"Authorization": f"Bearer {ADMIN}"})
        assert api.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in api.headers["content-security-policy"]


async def test_metrics_need_the_metrics_token_when_it_is_set(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    port = free_port()
    dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk,
                            server={"metrics_token": METRICS, "worker_metrics_port": port})
    async with AsyncTestClient(app=dep.app()) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {ADMIN}"}):
            answer = await client.get("/metrics", headers=headers)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        answer = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS}"})
        assert answer.status_code == 200 and "pkrelay_queue_depth" in answer.text
    server = worker_metrics.serve(config.load(dep.config_file))
    assert server is not None
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/metrics")).status_code == 401
            assert (await http.get(url + "/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
            answer = await http.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS}"})
            assert answer.status_code == 200 and "pkrelay_deliveries_total" in answer.text
            assert (await http.get(url + "/healthz")).status_code == 200  # the probes' page needs no token
    finally:
        server.shutdown()
        server.server_close()


async def test_metrics_are_open_without_a_metrics_token(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk)
    async with AsyncTestClient(app=dep.app()) as client:
        assert (await client.get("/metrics")).status_code == 200


@pytest.mark.parametrize("named", [False, True])
async def test_metric_labels_never_show_anything_of_a_sink_url(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit, named: bool
) -> None:
    hook_id = "ha-" + secrets.token_hex(16)  # a Home Assistant webhook id: the whole credential
    first, second = SinkServer(), SinkServer()
    first.start()
    second.start()
    try:
        url = f"{second.url}?webhook_id={hook_id}"
        sinks = [webhook_sink(first.url, name="kitchen"),
                 webhook_sink(url, **({"name": "front-door"} if named else {}))]
        dep = await _deployment(tmp_path, redis_server, system_creds, fake_pk, sinks=sinks)
        async with AsyncTestClient(app=dep.app()) as client:
            token = system_creds["signing_token"]
            payload = body("UPDATE_MEMBER", token, system_creds["system_id"], MEMBER_ID, {"name": "Sam"})
            assert (await FakeDispatcher(client, "/dispatch").send(payload)).status_code == 200
            await dep.work(FAST)
            assert len(first.received) == len(second.received) == 1
            text = (await client.get("/metrics")).text
        lines = [line for line in text.splitlines() if line.startswith("pkrelay_deliveries_total{")]
        label = "front-door" if named else "sink2"  # unnamed: its 1-based position in [[sinks]]
        assert any(f'outcome="delivered",sink="{label}"}}' in line for line in lines), lines
        assert any('outcome="delivered",sink="kitchen"}' in line for line in lines), lines
        old_label = hashlib.sha256(f"{url}|".encode()).hexdigest()[:12]  # what it was: guessable offline
        for part in (hook_id, str(second.port), "127.0.0.1", "webhook_id", old_label):
            assert part not in "\n".join(line for line in text.splitlines() if 'sink="' in line), part
    finally:
        first.stop()
        second.stop()
