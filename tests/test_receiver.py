"""The dispatch endpoint, end to end through a real Redis and a real SQLite log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

import pkrelay
from pkrelay import queue
from pkrelay.redis_server import EmbeddedRedis, free_port
from tests.deployment import add_to_config
from tests.fakepk.dispatcher import FakeDispatcher, body, new_system_id, new_token, sample_events
from tests.harness import Deployment
from tests.servers import ThreadedServer
from tests.waiting import until


async def test_registration_test_passes_and_pings_are_not_logged(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str]
) -> None:
    assert await dispatcher.register(system_creds["signing_token"], system_creds["system_id"])
    await deployment.work()
    assert await deployment.logged() == []


async def test_every_event_type_is_accepted_and_logged_as_sent(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str]
) -> None:
    token, system_id = system_creds["signing_token"], system_creds["system_id"]
    sent = []
    for event_type, content in sample_events(token, system_id):
        response = await dispatcher.send(content)
        if event_type == "UPDATE_GROUP_MEMBERS":  # its builder omits the token
            assert response.status_code == 401
            continue
        assert response.status_code == 200, (event_type, response.text)
        if event_type != "PING":
            sent.append(json.loads(content))
    await deployment.work()
    rows = await deployment.logged()
    assert [r.type for r in rows] == [s["type"] for s in sent]
    for row, original in zip(rows, sent, strict=True):
        assert row.id.startswith("evt_")
        assert row.source == "dispatch"
        assert row.system_id == system_id  # also for the account event sent with null system_id
        assert row.entity_id == original["id"]
        assert row.data == original["data"]
    assert len({r.id for r in rows}) == len(rows)


async def test_identical_bodies_are_two_events(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str]
) -> None:
    content = body("UPDATE_MEMBER", system_creds["signing_token"], system_creds["system_id"],
                   "2ee0c92b-bb4f-4a2c-a9a8-3b7d8f3d5f10", {"name": "Sam"})
    assert (await dispatcher.send(content)).status_code == 200
    assert (await dispatcher.send(content)).status_code == 200
    await deployment.work()
    assert len(await deployment.logged()) == 2


def _bad_bodies(token: str, system_id: str) -> dict[str, tuple[bytes, int]]:
    member = "2ee0c92b-bb4f-4a2c-a9a8-3b7d8f3d5f10"
    return {
        "wrong token": (body("UPDATE_MEMBER", new_token(), system_id, member, {"name": "x"}), 401),
        "unknown system": (body("UPDATE_MEMBER", new_token(), new_system_id(), member, {"name": "x"}), 401),
        "right token, other system": (body("UPDATE_MEMBER", token, new_system_id(), member, {"name": "x"}), 401),
        "missing token": (body("UPDATE_MEMBER", None, system_id, member, {"name": "x"}), 401),
        "empty token": (body("UPDATE_MEMBER", "", system_id, member, {"name": "x"}), 401),
        "not JSON": (b"type=UPDATE_MEMBER&signing_token=" + token.encode(), 400),
        "JSON array": (json.dumps([{"type": "PING", "signing_token": token}]).encode(), 400),
        "JSON string": (b'"PING"', 400),
        "empty body": (b"", 400),
        "missing type": (json.dumps({"signing_token": token, "system_id": system_id}).encode(), 400),
        "type not a string": (json.dumps({"type": 3, "signing_token": token, "system_id": system_id}).encode(), 400),
        "data of the wrong shape": (body("UPDATE_MEMBER", token, system_id, member, ["name"]), 400),
        "member field of the wrong type": (body("UPDATE_MEMBER", token, system_id, member, {"name": 42}), 400),
        "unknown type with non-object data": (body("NEW_THING", token, system_id, None, [1, 2]), 400),
        "oversized": (body("UPDATE_MEMBER", token, system_id, member, {"description": "x" * 300_000}), 413),
        "not UTF-8": (body("UPDATE_MEMBER", token, system_id, member, {"name": "x"}).replace(b'"x"', b'"\xff\xfe"'),
                      400),
        "nested 1,000 deep": (body("NEW_THING", token, system_id, None, None).replace(
            b'"data":null', b'"data":' + b"[" * 1000 + b"]" * 1000), 400),
    }


async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = system_creds["signing_token"]
    unauthorized = set()
    for name, (content, status) in _bad_bodies(token, system_creds["system_id"]).items():
        response = await dispatcher.send(content)
        assert response.status_code == status, (name, response.text)
        assert token not in response.text
        assert "error" in response.json()
        if status == 401:
            unauthorized.add(response.content)
    assert len(unauthorized) == 1  # unknown system and wrong token look the same
    assert token not in caplog.text
    redis = queue.connect(deployment.redis_url)
    assert await queue.depth(redis) == 0
    await redis.aclose()
    await deployment.work()
    assert await deployment.logged() == []
    assert list((tmp_path / "data" / "spool").iterdir()) == []


def test_a_large_body_hears_its_413_over_a_real_connection(deployment: Deployment) -> None:
    """1 MiB sent in full (and chunked): the client reads the 413, its connection is not reset."""
    port = free_port()
    server = ThreadedServer(deployment.app(), port)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            whole = http.post("/dispatch", content=b"x" * 1024 * 1024)
            assert whole.status_code == 413 and "max_body_bytes" in whole.json()["error"]
            chunked = http.post("/dispatch", content=iter([b"y" * 65536] * 16))  # no Content-Length
            assert chunked.status_code == 413
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()


async def test_a_refused_dispatch_warns_with_a_hint_but_not_too_often(
    dispatcher: FakeDispatcher, system_creds: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    wrong = new_token()
    for _ in range(20):  # a stranger, or an owner who has not pasted the token yet
        response = await dispatcher.send(body("UPDATE_SYSTEM", wrong, system_creds["system_id"], None, {"name": "x"}))
        assert response.status_code == 401
    await dispatcher.send(body("UPDATE_SYSTEM", None, system_creds["system_id"], None, {"name": "x"}))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per reason per 10 s
    assert "matches no configured system" in warnings[0] and "signing_token" in warnings[0]
    assert system_creds["system_id"] in warnings[0]
    assert "no signing_token" in warnings[1]
    assert wrong not in caplog.text and system_creds["signing_token"] not in caplog.text


async def test_events_answered_while_redis_is_down_reach_the_log_once_it_is_back(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str],
    redis_server: EmbeddedRedis, tmp_path: Path,
) -> None:
    token, system_id = system_creds["signing_token"], system_creds["system_id"]
    member = "2ee0c92b-bb4f-4a2c-a9a8-3b7d8f3d5f10"
    first = body("UPDATE_MEMBER", token, system_id, member, {"name": "before the outage"})
    assert (await dispatcher.send(first)).status_code == 200
    redis_server.stop()
    during = [body("UPDATE_MEMBER", token, system_id, member, {"name": f"during {i}"}) for i in range(20)]
    for content in during:
        assert (await dispatcher.send(content)).status_code == 200
    spool = tmp_path / "data" / "spool"
    assert len(list(spool.glob("*.event"))) == 20
    redis_server.start()

    async def spool_drained() -> bool:
        return not list(spool.glob("*.event"))

    await until(spool_drained, 10, "the spool to drain", interval=0.05)
    await deployment.work()
    names = [r.data["name"] for r in await deployment.logged()]
    assert names == ["before the outage"] + [f"during {i}" for i in range(20)]


async def test_503_never_a_false_200_when_neither_redis_nor_the_spool_can_take_it(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str],
    redis_server: EmbeddedRedis, tmp_path: Path,
) -> None:
    redis_server.stop()
    spool = tmp_path / "data" / "spool"
    spool.rmdir()
    spool.write_text("the spool's disk is gone")  # writes under it now fail, even as root
    content = body("UPDATE_SYSTEM", system_creds["signing_token"], system_creds["system_id"], None, {"name": "x"})
    response = await dispatcher.send(content)
    assert response.status_code == 503
    assert system_creds["signing_token"] not in response.text
    spool.unlink()
    spool.mkdir()
    redis_server.start()
    await deployment.work()
    assert await deployment.logged() == []


async def test_a_system_added_to_the_file_is_accepted_without_restart(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str], tmp_path: Path,
) -> None:
    newcomer = {"name": "newcomer", "system_id": new_system_id(), "signing_token": new_token()}
    assert not await dispatcher.register(newcomer["signing_token"], newcomer["system_id"])
    add_to_config(deployment.config_file, {"systems": [newcomer]})

    async def registered() -> bool:
        return await dispatcher.register(newcomer["signing_token"], newcomer["system_id"])

    await until(registered, 5, "the registration", interval=0.05)
    # the first system still works
    assert await dispatcher.register(system_creds["signing_token"], system_creds["system_id"])


def _sample(metrics_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_health_readiness_metrics_and_schema(client: AsyncTestClient, redis_server: EmbeddedRedis,
                                                   dispatcher: FakeDispatcher, system_creds: dict[str, str]) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "version": pkrelay.__version__}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"redis": "ok", "database": "ok", "spool": "ok"}
    before = (await client.get("/metrics")).text
    switch = "5a6b7c8d-1e2f-4a3b-8c9d-0e1f2a3b4c5d"
    await dispatcher.send(body("CREATE_SWITCH", system_creds["signing_token"], system_creds["system_id"], switch,
                               {"id": switch, "timestamp": "2026-11-22T18:03:00Z", "members": []}))
    await dispatcher.send(body("CREATE_SWITCH", new_token(), system_creds["system_id"], None, None))
    after = (await client.get("/metrics")).text
    for outcome, event_type in [("queued", "CREATE_SWITCH"), ("unauthorized", "-")]:
        name = "pkrelay_events_received_total"
        assert _sample(after, name, type=event_type, outcome=outcome) == \
            _sample(before, name, type=event_type, outcome=outcome) + 1
    assert _sample(after, "pkrelay_queue_depth") == 1
    assert (await client.get("/schema/openapi.json")).json()["info"]["title"] == "pkrelay"
    redis_server.stop()
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["redis"].startswith("unavailable") and not_ready.json()["database"] == "ok"
