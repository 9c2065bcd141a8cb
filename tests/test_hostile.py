"""Hostile and unlucky input at the edge: absurd nesting, fields the log cannot hold,
a Redis that stops mid-request, a wrong API token, connections that trickle."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from pkrelay import queue
from pkrelay.redis_server import EmbeddedRedis, free_port
from receiver import server
from tests.deployment import write_config
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.servers import ThreadedServer, clean_env
from tests.test_spool import _spool_empty
from tests.waiting import until

MEMBER = "2ee0c92b-bb4f-4a2c-a9a8-3b7d8f3d5f10"


async def _queued(deployment: Deployment) -> int:
    redis = queue.connect(deployment.redis_url)
    try:
        return await queue.depth(redis)
    finally:
        await redis.aclose()


async def test_absurd_nesting_is_a_400(dispatcher: FakeDispatcher, deployment: Deployment,
                                       system_creds: dict[str, str]) -> None:
    token, system_id = system_creds["signing_token"], system_creds["system_id"]
    for deep in (b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000):
        content = body("NEW_THING", token, system_id, None, None).replace(b'"data":null', b'"data":' + deep)
        response = await dispatcher.send(content)
        assert response.status_code == 400, response.text
    assert (await dispatcher.send(b"[" * 100_000)).status_code == 400
    assert await _queued(deployment) == 0


async def test_fields_not_of_pluralkits_shape_are_a_400_naming_the_field(
    dispatcher: FakeDispatcher, deployment: Deployment, system_creds: dict[str, str],
) -> None:
    token, system_id = system_creds["signing_token"], system_creds["system_id"]
    bad = {
        "type": [body("T" * 72, token, system_id, MEMBER, {}),
                 body("X\n2026-12-04 17:00:00,000 worker ERROR pkrelay: FORGED", token, system_id, None, None),
                 body("update_member", token, system_id, MEMBER, {})],
        "id": [body("UPDATE_MEMBER", token, system_id, "m" * 80, {"name": "x"}),
               body("UPDATE_MEMBER", token, system_id, f"../systems/{system_id}/switches?limit=1&", {}),
               body("UPDATE_MEMBER", token, system_id, "abcde\n", {})],
        "system_id": [body("UPDATE_SYSTEM", token, "s" * 65, None, {"name": "x"}),
                      body("UPDATE_SYSTEM", token, "exmpl", None, {"name": "x"})],
    }
    for field, contents in bad.items():
        for content in contents:
            response = await dispatcher.send(content)
            assert response.status_code == 400, (field, response.text)
            error = response.json()["error"]
            assert f"`{field}`" in error, error
            assert token not in error
    assert await _queued(deployment) == 0
    # every shape PluralKit uses is fine, and is logged
    shapes = [("X" * 64, "e4f2bb3c-59f2-4e4b-9b2c-0a0a0a0a0a0a"), ("UPDATE_MEMBER", "abcdef"),
              ("UPDATE_MEMBER_GUILD", "466378653216014359"), ("UPDATE_SYSTEM", None)]
    for event_type, entity_id in shapes:
        assert (await dispatcher.send(body(event_type, token, system_id, entity_id, {"k": "v"}))).status_code == 200
    await deployment.work()
    assert sorted((r.type, r.entity_id) for r in await deployment.logged()) == sorted(shapes)


async def test_a_redis_paused_mid_request_never_gets_a_false_answer(
    deployment: Deployment, redis_server: EmbeddedRedis, system_creds: dict[str, str], tmp_path: Path,
) -> None:
    """SIGSTOP: the enqueue is sent, no reply comes in time, and the server runs it once it
    is resumed. Spooled under the same id, it is one event; with no spool, the 503 says
    it may still arrive (not "nothing was kept")."""
    assert redis_server.process is not None
    pid = redis_server.process.pid
    spool = tmp_path / "data" / "spool"
    async with AsyncTestClient(app=deployment.app()) as client:
        dispatcher = FakeDispatcher(client, "/dispatch")
        warm = body("UPDATE_MEMBER", system_creds["signing_token"], system_creds["system_id"], MEMBER,
                    {"name": "warm-up"})
        assert (await dispatcher.send(warm)).status_code == 200  # a pooled connection, now in use

        def update(name: str) -> bytes:
            return body("UPDATE_MEMBER", system_creds["signing_token"], system_creds["system_id"], MEMBER,
                        {"name": name})

        spool.rmdir()
        spool.write_text("no spool: its disk is gone")
        os.kill(pid, signal.SIGSTOP)
        try:
            answer = await dispatcher.send(update("unconfirmed"))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert answer.status_code == 503
        assert "may still be delivered" in answer.json()["error"] and "nothing was kept" not in answer.text
        await until(lambda: _has_queued(deployment, 2), 10, "the paused server to run the enqueue")
        spool.unlink()
        spool.mkdir()

        os.kill(pid, signal.SIGSTOP)
        try:
            answer = await dispatcher.send(update("spooled and queued"))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert answer.status_code == 200
        await until(lambda: _spool_empty(spool), 20, "the spool to drain")
    await deployment.work()
    names = [r.data["name"] for r in await deployment.logged()]
    assert names == ["warm-up", "unconfirmed", "spooled and queued"]  # each once


async def _has_queued(deployment: Deployment, n: int) -> bool:
    return await _queued(deployment) >= n


def test_backfill_with_a_wrong_token_is_one_clear_line(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk_url: str, system_creds: dict[str, str],
) -> None:
    # PluralKit answers a wrong token as if none was given, except for `@me`: a 401
    creds = {"name": "home", "api_token": "not-the-token-" + "x" * 40}
    cfg = write_config(tmp_path / "pkrelay.toml", {"systems": [creds], "pluralkit": {"api_base_url": fake_pk_url},
                                                   "redis": {"url": redis_server.url}})
    done = subprocess.run([sys.executable, "-m", "pkrelay", "backfill", "--config", str(cfg)],
                          capture_output=True, text=True, env=clean_env(), timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("pkrelay backfill: system 'home': PluralKit refused its api_token (401): it is wrong or was "
                    "revoked; DM `pk;token` to the bot for the current one")
    assert creds["api_token"] not in done.stdout + done.stderr


@pytest.fixture
def fake_pk_url(fake_pk) -> str:  # type: ignore[no-untyped-def]
    return str(fake_pk.base_url)


async def _trickle(port: int, data: bytes, head: bytes = b"", interval: float = 0.2) -> float:
    """Connect, send `head` at once and then `data` a byte every `interval`; how long
    until the server hangs up."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    try:
        for byte in data:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), interval) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                break
        return loop.time() - start
    finally:
        writer.close()


async def test_trickling_connections_are_closed_while_real_dispatches_are_answered(
    deployment: Deployment, system_creds: dict[str, str],
) -> None:
    """300 connections sending a byte every 0.2 s (headers, or a body after complete
    headers) are closed at the read deadline; a real dispatch is answered meanwhile."""
    port, timeout = free_port(), 1.5
    threaded = ThreadedServer(None, port, server.config(deployment.app(), "127.0.0.1", port, read_timeout=timeout))
    threaded.start()
    try:
        headers = b"POST /dispatch HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n" * 50
        body_after_headers = b"POST /dispatch HTTP/1.1\r\nHost: relay\r\nContent-Length: 5000\r\n\r\n"
        slow = [asyncio.create_task(_trickle(port, headers)) for _ in range(200)]
        slow += [asyncio.create_task(_trickle(port, b"x" * 5000, body_after_headers)) for _ in range(100)]
        await asyncio.sleep(0.3)  # a moment for them to connect and start trickling
        assert not any(t.done() for t in slow)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as http:
            real = await http.post("/dispatch", content=body(
                "UPDATE_MEMBER", system_creds["signing_token"], system_creds["system_id"], MEMBER, {"name": "real"}))
            assert real.status_code == 200, real.text
            assert not all(t.done() for t in slow)  # answered while the slow ones were open
            lasted = await asyncio.wait_for(asyncio.gather(*slow), 20)
            assert max(lasted) < timeout + 1.5, max(lasted)
            assert (await http.get("/healthz")).status_code == 200
    finally:
        threaded.stop()



async def test_a_flood_of_unread_connections_evicts_its_oldest_not_real_requests(
    deployment: Deployment, system_creds: dict[str, str],
) -> None:
    port = free_port()
    config = server.config(deployment.app(), "127.0.0.1", port, read_timeout=60, max_unread=20)
    threaded = ThreadedServer(None, port, config)
    threaded.start()
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        for reader, _ in idle[:20]:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # evicted by the newer ones
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            real = await http.post("/dispatch", content=body(
                "UPDATE_MEMBER", system_creds["signing_token"], system_creds["system_id"], MEMBER, {"name": "real"}))
            assert real.status_code == 200, real.text
        assert not idle[-1][0].at_eof()
        for _, writer in idle:
            writer.close()
    finally:
        threaded.stop()
