"""Attacks on one deployment serving two systems, against a real `pkrelay run`.

alpha and beta share the deployment, as in a household or a community; beta's owner
(who holds beta's signing token, and nothing of alpha's) tries to reach into alpha's
events and state, and strangers try to use or slow what is not theirs. Each attack
names the answer it must get.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from pkrelay.redis_server import free_port
from tests.deployment import webhook_sink, write_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.servers import pkrelay_run
from tests.sink_server import SinkServer
from tests.waiting import wait_until

ADMIN = "admin-token-for-the-security-tests-0123456789"
METRICS = "metrics-token-for-the-security-tests-97531"
STREAM = "stream-token-for-the-security-tests-86420"
MAX_STREAMS = 3


@dataclass
class Shared:
    """One running deployment with two systems, each with its own sink."""

    port: int
    proc: subprocess.Popen[bytes]
    alpha: FakeSystem
    beta: FakeSystem
    alpha_token: str
    beta_token: str
    alpha_sink: SinkServer
    beta_sink: SinkServer
    redis: redis_sync.Redis
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, content: bytes, path: str = "/dispatch") -> httpx.Response:
        return httpx.post(self.url + path, content=content, headers={"content-type": "application/json"})

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def _bodies(sink: SinkServer) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(r.body) for r in sink.received]


@pytest.fixture
def shared(tmp_path: Path, fake_pk: FakePluralKit) -> Iterator[Shared]:
    alpha, beta = fake_pk.add_system("Alpha"), fake_pk.add_system("Beta")
    alpha_token, beta_token = "a" * 63 + "=", "b" * 63 + "="
    alpha_sink, beta_sink = SinkServer(), SinkServer()
    alpha_sink.start()
    beta_sink.start()
    port = free_port()
    # As the example configs ship: no system_id. alpha has an api_token (its UUID is
    # learned from the API at start), beta only its signing token (pinned by its first
    # verified dispatch).
    systems = [{"name": "alpha", "signing_token": alpha_token, "api_token": alpha.token, "mode": "webhook"},
               {"name": "beta", "signing_token": beta_token, "mode": "webhook"}]
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "systems": systems,
        "server": {"port": port, "admin_token": ADMIN, "metrics_token": METRICS, "stream_token": STREAM,
                   "max_streams": MAX_STREAMS},
        "pluralkit": {"api_base_url": fake_pk.base_url},
        "sinks": [webhook_sink(alpha_sink.url, name="alpha-hook", systems=["alpha"]),
                  webhook_sink(beta_sink.url, name="beta-hook", systems=["beta"])]})
    output = tmp_path / "run.log"
    with output.open("wb") as out, pkrelay_run(cfg, port, output=out) as proc:
        redis = redis_sync.Redis.from_url((tmp_path / "data" / "redis" / "url").read_text().strip())
        try:
            wait_until(lambda: redis.hget("pkrelay:pins", "alpha"), 30, "alpha's UUID learned from the API")
            yield Shared(port, proc, alpha, beta, alpha_token, beta_token, alpha_sink, beta_sink, redis, output)
        finally:
            redis.close()
            alpha_sink.stop()
            beta_sink.stop()


def test_one_system_cannot_write_into_anothers_events_or_state(shared: Shared, fake_pk: FakePluralKit) -> None:
    alpha, beta = shared.alpha, shared.beta
    member = fake_pk.add_member(alpha, "Sam")
    spoof = {"display_name": "SPOOFED"}
    # beta's token naming alpha: refused, on the shared URL and on alpha's own
    assert shared.send(body("UPDATE_MEMBER", shared.beta_token, alpha.uuid, member["uuid"], spoof)).status_code == 401
    assert shared.send(body("UPDATE_MEMBER", shared.beta_token, alpha.uuid, member["uuid"], spoof),
                       "/dispatch/alpha").status_code == 401
    assert shared.send(body("UPDATE_MEMBER", shared.beta_token, beta.uuid, member["uuid"], spoof),
                       "/dispatch/alpha").status_code == 401
    # beta naming itself (pinned by this first verified dispatch) but alpha's member: beta's own event, alone
    assert shared.send(body("UPDATE_MEMBER", shared.beta_token, beta.uuid, member["uuid"], spoof)).status_code == 200
    wait_until(lambda: shared.beta_sink.received, 30, "beta's event delivered to beta's sink")
    assert shared.redis.hget("pkrelay:pins", "beta") == beta.uuid.encode()
    # ...and once pinned, beta's token cannot name any other UUID either
    assert shared.send(body("UPDATE_SYSTEM", shared.beta_token, fake_pk.add_system("Third").uuid, None,
                            {"name": "x"})).status_code == 401
    # alpha's real edit: what PluralKit has, and nothing beta said
    member["display_name"] = "Real"
    assert shared.send(body("UPDATE_MEMBER", shared.alpha_token, alpha.uuid, member["uuid"],
                            {"display_name": "Real"})).status_code == 200
    wait_until(lambda: shared.alpha_sink.received, 30, "alpha's event delivered")
    time.sleep(0.5)  # a window for anything wrongly delivered after it, not a wait for a condition
    delivered = _bodies(shared.alpha_sink)
    assert [e["type"] for e in delivered] == ["UPDATE_MEMBER"]
    assert delivered[0]["system_id"] == alpha.uuid
    assert delivered[0]["entity"]["display_name"] == "Real"
    assert "SPOOFED" not in json.dumps(delivered)
    assert all(e["system_id"] == beta.uuid for e in _bodies(shared.beta_sink))


def test_an_event_id_never_reaches_an_api_path(shared: Shared, fake_pk: FakePluralKit) -> None:
    alpha = shared.alpha
    for entity_id in (f"../systems/{alpha.uuid}/switches?limit=1&", "..", "abc/def", "abcde%2F"):
        response = shared.send(body("UPDATE_MEMBER", shared.alpha_token, alpha.uuid, entity_id, {"name": "x"}))
        assert response.status_code == 400, entity_id
        assert "`id`" in response.json()["error"]
    assert not [j for j in fake_pk.journal if "switches" in j.path or ".." in j.path]


def test_an_event_field_cannot_forge_a_log_line(shared: Shared) -> None:
    forged = "X\n2026-12-04 17:00:00,000 worker ERROR pkrelay: FORGED"
    for content in (body(forged, shared.alpha_token, shared.alpha.uuid, None, {}),
                    body("UPDATE_SYSTEM", shared.alpha_token + "\nFORGED", shared.alpha.uuid, None, {}),
                    body("UPDATE_SYSTEM", shared.alpha_token, "\nFORGED", None, {})):
        assert shared.send(content).status_code in (400, 401)
    assert not [line for line in shared.log().splitlines() if "FORGED" in line and not line.startswith("20")]
    assert "\nFORGED" not in shared.log() and "ERROR pkrelay: FORGED" not in shared.log()


def test_wrong_token_pings_are_counted_not_listed(shared: Shared) -> None:
    for _ in range(60):  # a stranger fills the list...
        assert shared.send(body("PING", "c" * 64, shared.alpha.uuid, None, None)).status_code == 401

    async def register() -> bool:  # ...then the owner registers, as the bot checks it
        async with httpx.AsyncClient(base_url=shared.url) as client:
            return await FakeDispatcher(client, "/dispatch").register(shared.alpha_token, shared.alpha.uuid)

    assert asyncio.run(register())
    listed = [json.loads(p) for p in shared.redis.lrange("pkrelay:dashboard:pings", 0, -1)]
    assert [(p["system"], p["status"]) for p in listed] == [("alpha", 200)]
    metrics = httpx.get(shared.url + "/metrics", headers={"Authorization": f"Bearer {METRICS}"}).text
    refused = [line for line in metrics.splitlines()
               if line.startswith("pkrelay_events_received_total{") and 'type="PING"' in line
               and 'outcome="unauthorized"' in line]
    assert refused and float(refused[0].split()[-1]) >= 61  # the 60, and the bot's random-token PING


def test_guessing_the_admin_token_is_stopped_after_ten_tries(shared: Shared) -> None:
    with httpx.Client(base_url=shared.url) as client:
        answers = [client.post("/login", data={"token": f"guess-{i}"}).status_code for i in range(10)]
        assert 429 not in answers
        for attempt in (client.post("/login", data={"token": "guess-10"}),
                        client.post("/login", data={"token": ADMIN}),  # the right one is not confirmed either
                        client.get("/api/events", headers={"Authorization": f"Bearer {ADMIN}"})):
            assert attempt.status_code == 429
            assert int(attempt.headers["retry-after"]) > 0
            assert ADMIN not in attempt.text


def test_a_logged_out_session_is_dead_on_the_server(shared: Shared) -> None:
    with httpx.Client(base_url=shared.url) as client:
        assert client.post("/login", data={"token": ADMIN}).status_code in (200, 303)
        cookie = client.cookies["pkrelay_session"]
        page = client.get("/deliveries").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        assert client.post("/logout", data={"csrf": csrf}).status_code in (200, 303)
    with httpx.Client(base_url=shared.url, cookies={"pkrelay_session": cookie}, follow_redirects=True) as stolen:
        assert "Log in" in stolen.get("/deliveries").text  # the old cookie is a stranger now
        answer = stolen.post("/deliveries/test", data={"csrf": csrf, "sink": "alpha-hook"}, follow_redirects=False)
        assert answer.status_code in (303, 401, 403) and "Log in" in stolen.get("/").text
    time.sleep(0.5)  # a window for a test event that should not exist, not a wait for a condition
    assert not shared.alpha_sink.received


def test_pages_forbid_inline_scripts_framing_and_sniffing(shared: Shared) -> None:
    for path in ("/login", "/static/dashboard.css"):
        headers = httpx.get(shared.url + path).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'self'" in policy
        assert headers["x-content-type-options"] == "nosniff"


def test_metrics_need_their_token_and_never_show_a_sink_url(shared: Shared) -> None:
    assert httpx.get(shared.url + "/metrics").status_code == 401
    assert httpx.get(shared.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 401
    assert shared.send(body("UPDATE_SYSTEM", shared.alpha_token, shared.alpha.uuid, None, {"name": "x"})).status_code \
        == 200
    wait_until(lambda: shared.alpha_sink.received, 30, "alpha's event delivered")

    def counted() -> str | None:
        text = httpx.get(shared.url + "/metrics", headers={"Authorization": f"Bearer {METRICS}"}).text
        return text if "pkrelay_deliveries_total{" in text else None

    text = wait_until(counted, 30, "the delivery counted")
    sinks = {line.split('sink="')[1].split('"')[0] for line in text.splitlines()
             if line.startswith("pkrelay_deliveries_total{")}
    assert sinks == {"alpha-hook"}
    assert str(shared.alpha_sink.port) not in text and "127.0.0.1" not in text


def test_a_stream_reader_cannot_hold_more_than_max_streams(shared: Shared) -> None:
    headers = {"Authorization": f"Bearer {STREAM}"}
    with contextlib.ExitStack() as streams, httpx.Client(base_url=shared.url, timeout=10) as client:
        for _ in range(MAX_STREAMS):
            opened = streams.enter_context(client.stream("GET", "/api/stream", headers=headers))
            assert opened.status_code == 200
        refused = client.get("/api/stream", headers=headers)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        # the read-only token opens nothing else
        assert client.get("/api/events", headers=headers).status_code == 401
        # ...and the streams still get what is logged
        assert shared.send(body("UPDATE_SYSTEM", shared.alpha_token, shared.alpha.uuid, None, {"name": "y"})) \
            .status_code == 200
        wait_until(lambda: shared.alpha_sink.received, 30, "alpha's event delivered")

    def accepted() -> bool:
        with httpx.Client(base_url=shared.url, timeout=10) as client, \
                client.stream("GET", "/api/stream", headers=headers) as again:
            return again.status_code == 200

    wait_until(accepted, 30, "a stream accepted once those readers left")
