"""Delivery to webhook sinks: signed, retried with the same id, dead-lettered, replayed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from arq import create_pool
from arq.connections import RedisSettings
from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pkrelay import config, db
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store import deliveries
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import deploy, webhook_sink, write_config
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.harness import Deployment
from tests.servers import clean_env
from tests.sink_server import SinkServer
from tests.waiting import until
from workers.resources import SINK_CONCURRENCY

FAST = RetryPolicy(base=0.05, cap=0.2, window=3600)


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def sinks() -> Iterator[list[SinkServer]]:
    servers: list[SinkServer] = []
    yield servers
    for server in servers:
        server.stop()


def _serve(sinks: list[SinkServer], respond=lambda n: 200) -> SinkServer:  # type: ignore[no-untyped-def]
    server = SinkServer(respond=respond)
    server.start()
    sinks.append(server)
    return server


async def _dispatch(dep: Deployment, creds: dict[str, str], *contents: bytes) -> None:
    async with AsyncTestClient(app=dep.app()) as client:
        for content in contents:
            assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200


def _update(creds: dict[str, str], name: str) -> bytes:
    return body("UPDATE_MEMBER", creds["signing_token"], creds["system_id"], MEMBER_ID, {"name": name})


async def _deliveries(dep: Deployment) -> list[sa.Row]:
    engine = db.create_engine(dep.live().current.database_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.select(db.deliveries))).all())
    finally:
        await engine.dispose()


async def test_signed_delivery_verifies_with_an_independent_library(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    secret = _secret()
    sink = _serve(sinks)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url, secret)])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"))
    await dep.work(FAST)
    [got] = sink.received
    envelope = Webhook(secret).verify(got.body, got.headers)
    [row] = await dep.logged()
    assert envelope["id"] == row.id == got.headers["webhook-id"]
    assert envelope["type"] == "UPDATE_MEMBER" and envelope["data"] == {"name": "Sam"}
    assert envelope["source"] == "dispatch" and envelope["system_id"] == system_creds["system_id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(_secret()).verify(got.body, got.headers)  # another key does not verify


async def test_a_sink_failing_three_times_gets_the_same_id_until_it_succeeds(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    sink = _serve(sinks, respond=lambda n: 503 if n <= 3 else 204)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url, _secret())])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"))
    await dep.work(FAST)
    ids = [r.headers["webhook-id"] for r in sink.received]
    assert len(ids) == 4 and len(set(ids)) == 1
    [delivery] = await _deliveries(dep)
    assert delivery.status == "delivered" and delivery.attempts == 4


async def test_a_hung_sink_does_not_hold_up_another(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    release = threading.Event()
    hung = _serve(sinks, respond=lambda n: 200 if release.wait(30) else 500)
    fine = _serve(sinks)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds],
                       sinks=[webhook_sink(hung.url), webhook_sink(fine.url)])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"))
    worker = asyncio.create_task(dep.work(FAST))
    # Both deliveries start at once; wait until the healthy one has arrived and the hung
    # one is in flight, in whichever order the worker started them.
    await until(lambda: fine.received and hung.received, 10, "a request at each sink", interval=0.025,
                seen=lambda: {"fine": len(fine.received), "hung": len(hung.received)})
    assert len(fine.received) == 1, "the healthy sink waited for the hung one"
    assert len(hung.received) == 1 and not release.is_set()  # the hung request is still in flight
    release.set()
    await worker
    assert {d.status for d in await _deliveries(dep)} == {"delivered"}


async def test_dead_letter_then_replay_with_the_same_id(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    healthy = threading.Event()
    sink = _serve(sinks, respond=lambda n: 200 if healthy.is_set() else 500)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"))
    await dep.work(RetryPolicy(base=0.02, cap=0.05, window=0.3))
    [delivery] = await _deliveries(dep)
    assert delivery.status == "dead" and delivery.attempts >= 2 and delivery.last_error == "HTTP 500"
    failed = len(sink.received)

    healthy.set()
    engine = db.create_engine(dep.live().current.database_url)
    redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
    assert await deliveries.replay(engine, redis, dep.live().current.sinks, dead=True) == 1
    await redis.aclose()
    await engine.dispose()
    await dep.work(FAST)
    [delivery] = await _deliveries(dep)
    assert delivery.status == "delivered"
    assert len(sink.received) == failed + 1
    assert len({r.headers["webhook-id"] for r in sink.received}) == 1


async def test_a_burst_whose_first_attempts_all_fail_is_retried_one_by_one_until_delivered(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    """A job sends the waiting first attempts of its sink with its own; each that fails
    gets its own retry (none is left pending, none sent twice in a row)."""
    seen: set[str] = set()

    def respond(n: int) -> int:  # the first attempt of every event is refused
        event_id = sink.received[n - 1].headers["webhook-id"]
        first = event_id not in seen
        seen.add(event_id)
        return 503 if first else 200

    sink = _serve(sinks, respond=respond)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    await _dispatch(dep, system_creds, *(_update(system_creds, f"n{i}") for i in range(12)))
    await dep.work(FAST)
    ids = [r.headers["webhook-id"] for r in sink.received]
    assert len(ids) == 24 and all(ids.count(i) == 2 for i in ids)  # each once refused, once taken
    assert {(d.status, d.attempts) for d in await _deliveries(dep)} == {("delivered", 2)}


async def test_a_sink_gets_a_few_requests_at_a_time_not_the_whole_burst(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    lock, in_flight, most = threading.Lock(), [0], [0]

    def respond(n: int) -> int:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        threading.Event().wait(0.05)  # a sink that takes 50 ms to answer
        with lock:
            in_flight[0] -= 1
        return 200

    sink = _serve(sinks, respond=respond)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    await _dispatch(dep, system_creds, *(_update(system_creds, f"n{i}") for i in range(40)))
    await dep.work(FAST)
    assert len(sink.received) == 40
    assert 1 < most[0] <= SINK_CONCURRENCY


async def test_an_attempt_that_raises_anything_is_a_recorded_failure_and_ends_dead_lettered(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
) -> None:
    """A sink whose attempts fail in a way nobody foresaw (here the host's empty label,
    a UnicodeError from the IDNA codec, which is no aiohttp ClientError) is still
    retried, recorded and dead-lettered, never stuck pending."""
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink("http://a..b/hook")])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"))
    await dep.work(RetryPolicy(base=0.02, cap=0.05, window=0.3))
    [delivery] = await _deliveries(dep)
    assert delivery.status == "dead" and delivery.attempts >= 2
    assert "UnicodeError" in delivery.last_error


async def test_replay_by_id_and_since_delivers_again(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    sink = _serve(sinks)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    start = datetime.now(UTC)
    await _dispatch(dep, system_creds, _update(system_creds, "a"), _update(system_creds, "b"))
    await dep.work(FAST)
    first, second = await dep.logged()
    engine = db.create_engine(dep.live().current.database_url)
    redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
    sinks_now = dep.live().current.sinks
    def ids() -> list[str]:
        return sorted(r.headers["webhook-id"] for r in sink.received)

    assert ids() == [first.id, second.id]
    assert await deliveries.replay(engine, redis, sinks_now, event_ids=[first.id]) == 1
    await dep.work(FAST)
    assert ids() == [first.id, first.id, second.id]
    assert await deliveries.replay(engine, redis, sinks_now, since=start) == 2
    await dep.work(FAST)
    await redis.aclose()
    await engine.dispose()
    assert ids() == [first.id] * 3 + [second.id] * 2


async def test_replay_keeps_the_delivery_s_history(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    """Replayed, a delivery's attempts add up and its first attempt stays the first; only
    the retry window starts afresh."""
    sink = _serve(sinks, respond=lambda n: 500 if n == 1 else 200)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url, name="s")])
    await _dispatch(dep, system_creds, _update(system_creds, "a"))
    await dep.work(FAST)
    engine = db.create_engine(dep.live().current.database_url)
    redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
    try:
        [before] = await deliveries.listing(engine, "delivered")
        assert before.attempts == 2 and before.first_attempt_at is not None
        assert await deliveries.replay(engine, redis, dep.live().current.sinks, event_ids=[before.event_id]) == 1
        await dep.work(FAST)
        [after] = await deliveries.listing(engine, "delivered")
    finally:
        await redis.aclose()
        await engine.dispose()
    assert after.attempts == 3 and after.first_attempt_at == before.first_attempt_at
    assert after.last_attempt_at is not None and after.last_attempt_at > before.last_attempt_at  # type: ignore[operator]


async def test_a_delivery_already_queued_is_not_queued_twice(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    sink = _serve(sinks)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    await _dispatch(dep, system_creds, _update(system_creds, "a"))
    await dep.work(FAST)
    [event] = await dep.logged()
    engine = db.create_engine(dep.live().current.database_url)
    redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
    sinks_now = dep.live().current.sinks
    assert await deliveries.replay(engine, redis, sinks_now, event_ids=[event.id]) == 1
    # Queued again while its job still waits, the delivery keeps its one job.
    assert await deliveries.enqueue(redis, [(event.id, sinks_now[0].key)]) == 0
    assert await redis.zcard("arq:queue") == 1
    await dep.work(FAST)
    assert [r.headers["webhook-id"] for r in sink.received] == [event.id, event.id]
    # Its job done, the same delivery can be queued (and is sent) again.
    assert await deliveries.replay(engine, redis, sinks_now, event_ids=[event.id]) == 1
    await dep.work(FAST)
    await redis.aclose()
    await engine.dispose()
    assert [r.headers["webhook-id"] for r in sink.received] == [event.id] * 3


async def test_sinks_only_get_the_types_and_systems_they_ask_for(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    switches, members, other = _serve(sinks), _serve(sinks), _serve(sinks)
    away = {"name": "away", "system_id": "7f6e5d4c-0000-4000-8000-000000000000"}
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds, away], sinks=[
        webhook_sink(switches.url, events=["CREATE_SWITCH"]),
        webhook_sink(members.url, events=["UPDATE_MEMBER"], systems=["home"]),
        webhook_sink(other.url, systems=["away"])])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"))
    await dep.work(FAST)
    assert (len(switches.received), len(members.received), len(other.received)) == (0, 1, 0)


def test_the_default_retries_of_a_failing_sink_start_within_two_minutes_and_last_a_day() -> None:
    policy = RetryPolicy()
    for _ in range(100):  # jitter: every draw, not one lucky one
        assert sum(policy.delay(n) for n in range(1, 4)) < 120  # three retries within SPEC's 2 minutes
    assert policy.window >= 24 * 3600 and policy.delay(30) <= policy.cap


ADMIN = "admin-token-for-tests-0123456789"


async def test_dead_lettered_deliveries_are_listed_by_the_api_and_the_cli(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    down, fine = _serve(sinks, respond=lambda n: 500), _serve(sinks)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], server={"admin_token": ADMIN},
                       sinks=[webhook_sink(down.url, name="down"), webhook_sink(fine.url, name="fine")])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"), _update(system_creds, "Kim"))
    await dep.work(RetryPolicy(base=0.02, cap=0.05, window=0.3))
    older, newer = await dep.logged()
    async with AsyncTestClient(app=dep.app()) as client:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        answer = await client.get("/api/deliveries", params={"state": "dead"}, headers=auth)
        assert answer.status_code == 200
        dead = answer.json()
        assert [(d["event_id"], d["sink"]) for d in dead] == [(newer.id, "down"), (older.id, "down")]  # newest first
        assert dead[0]["type"] == "UPDATE_MEMBER" and dead[0]["system"] == "home" and dead[0]["attempts"] >= 2
        assert dead[0]["last_error"] == "HTTP 500" and dead[0]["first_attempt_at"] <= dead[0]["last_attempt_at"]
        delivered = (await client.get("/api/deliveries", params={"state": "delivered", "sink": "fine", "limit": 1},
                                      headers=auth)).json()
        assert [(d["event_id"], d["state"]) for d in delivered] == [(newer.id, "delivered")]
        assert (await client.get("/api/deliveries", params={"state": "lost"}, headers=auth)).status_code == 400
        assert (await client.get("/api/deliveries")).status_code == 401

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pkrelay", "deliveries", "--config", str(dep.config_file), *args],
                              capture_output=True, text=True, env=clean_env(), timeout=60)

    listed = cli()
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["event_id"] for line in listed.stdout.splitlines()] == [newer.id, older.id]
    assert cli("--sink", "fine").stdout == ""  # nothing of that sink is dead
    wrong = cli("--limit", "0")
    assert wrong.returncode == 2 and "--limit 0: must be from 1 to 1000" in wrong.stderr


def test_the_delivery_section_is_validated(tmp_path: Path) -> None:
    path = write_config(tmp_path / "pkrelay.toml", {"delivery": {"retry_first_s": 2, "retry_max_s": 600,
                                                                 "retry_window_h": 48}})
    policy = RetryPolicy.of(config.load(path, {}).delivery)
    assert (policy.base, policy.cap, policy.window) == (2, 600, 48 * 3600)
    for delivery, named in [({"retry_first_s": 60}, "delivery.retry_first_s"),
                            ({"retry_window_h": 12}, "retry_window_h"),
                            ({"retry_first_s": 10, "retry_max_s": 5}, "retry_max_s must be at least"),
                            ({"retry_window_h": 800}, "delivery.retry_window_h")]:
        write_config(path, {"delivery": delivery})
        with pytest.raises(config.ConfigError, match=named):
            config.load(path, {})
    write_config(path, {"database": {"retention_days": 1}, "delivery": {"retry_window_h": 48}})
    with pytest.raises(config.ConfigError, match="within database.retention_days"):
        config.load(path, {})


async def test_the_worker_retries_on_the_configured_schedule(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], sinks: list[SinkServer],
    fake_pk: FakePluralKit,
) -> None:
    sink = _serve(sinks, respond=lambda n: 500 if n == 1 else 200)
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], delivery={"retry_first_s": 15},
                       sinks=[webhook_sink(sink.url)])
    await _dispatch(dep, system_creds, _update(system_creds, "Sam"))
    await dep.work()  # the policy of the config file, as `pkrelay worker` runs it
    first, second = sink.received
    assert second.at - first.at >= 7.5  # 7.5-15 s: the configured first retry, not the default 2.5-5 s
