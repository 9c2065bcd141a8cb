"""GET /api/stream as an integration consumes it: a real uvicorn, a streaming HTTP client."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import event as sa_event

from pkrelay import db
from pkrelay.envelope import new_event_id
from pkrelay.redis_server import EmbeddedRedis, free_port
from receiver.stream_hub import StreamSettings
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.harness import Deployment
from tests.servers import ThreadedServer
from tests.waiting import until

ADMIN = "admin-token-for-tests-0123456789"
STREAM = "stream-token-for-tests-987654321"
# Short timings so tests wait milliseconds, not SPEC's 15 s.
FAST = StreamSettings(poll_interval=0.05, heartbeat=0.3, settle=0.1)


@dataclass
class Served:
    """A deployment whose receiver runs in a real uvicorn on loopback."""

    dep: Deployment
    app: Any
    url: str
    creds: dict[str, str]

    async def dispatch(self, *contents: bytes) -> None:
        async with httpx.AsyncClient() as client:
            for content in contents:
                assert (await FakeDispatcher(client, self.url + "/dispatch").send(content)).status_code == 200

    def update(self, name: str) -> bytes:
        return body("UPDATE_MEMBER", self.creds["signing_token"], self.creds["system_id"], MEMBER_ID, {"name": name})

    def rename_system(self, name: str) -> bytes:
        return body("UPDATE_SYSTEM", self.creds["signing_token"], self.creds["system_id"], None, {"name": name})


@asynccontextmanager
async def serve(tmp_path: Path, redis: EmbeddedRedis, creds: dict[str, str], fake: FakePluralKit, *,
                admin: str = ADMIN, stream: str = STREAM, server: dict[str, Any] | None = None,
                sinks: list[dict[str, Any]] | None = None) -> AsyncIterator[Served]:
    """The receiver of a fresh deployment served for real; the tests' stream timings."""
    dep = await deploy(tmp_path, redis, fake, [creds], server={"admin_token": admin, "stream_token": stream,
                                                               **(server or {})}, sinks=sinks or [])
    app = dep.app()
    app.state.stream = FAST
    port = free_port()
    server = ThreadedServer(app, port)
    server.start()
    try:
        yield Served(dep, app, f"http://127.0.0.1:{port}", creds)
    finally:
        server.stop()


@dataclass
class Message:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None
    at: float = field(default_factory=time.monotonic)

    def envelope(self) -> dict[str, Any]:
        assert self.data is not None
        return msgspec.json.decode(self.data)


class Stream:
    """One SSE connection, parsed as a browser's EventSource would; each line is
    stamped when it arrives, however late the test reads it."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines: asyncio.Queue[tuple[float, str | None]] = asyncio.Queue()
        self._pump = asyncio.create_task(self._read(response))

    async def _read(self, response: httpx.Response) -> None:
        try:
            async for line in response.aiter_lines():
                self._lines.put_nowait((time.monotonic(), line))
        finally:
            self._lines.put_nowait((time.monotonic(), None))

    async def close(self) -> None:
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)

    async def next(self, timeout: float = 10) -> Message:
        message = Message()
        async with asyncio.timeout(timeout):
            while True:
                at, line = await self._lines.get()
                if line is None:
                    raise AssertionError("the stream ended")
                if not line:
                    message.at = at
                    return message
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    message.comment = value
                else:
                    setattr(message, name, value)

    async def events(self, count: int, timeout: float = 10) -> list[Message]:
        got: list[Message] = []
        while len(got) < count:
            message = await self.next(timeout)
            if message.comment is None:
                got.append(message)
        return got

    async def until_quiet(self, logged_by: float) -> list[Message]:
        """Every event until two heartbeats arrived after what was logged by
        `logged_by` had settled: the server read the log after that, so the events
        that match are all here."""
        got: list[Message] = []
        quiet = 0
        while quiet < 2:
            message = await self.next()
            if message.comment is None:
                got.append(message)
            elif message.comment == "keepalive" and message.at >= logged_by + FAST.settle:
                quiet += 1
        return got


@asynccontextmanager
async def stream(served: Served, token: str | None = ADMIN, params: Any = None,
                 headers: dict[str, str] | None = None) -> AsyncIterator[Stream]:
    """Connected, and past the server's first comment: from here on every event logged reaches it."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        async with client.stream("GET", served.url + "/api/stream", params=params, headers=sent) as response:
            assert response.status_code == 200, response.status_code
            assert response.headers["content-type"].startswith("text/event-stream")
            connection = Stream(response)
            try:
                assert (await connection.next()).comment == "connected"
                yield connection
            finally:
                await connection.close()


@pytest.fixture
async def served(tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str],
                 fake_pk: FakePluralKit) -> AsyncIterator[Served]:
    async with serve(tmp_path, redis_server, system_creds, fake_pk) as s:
        yield s


def _ids(messages: list[Message]) -> list[str]:
    return [m.id or "" for m in messages]


async def test_two_clients_with_different_filters_each_get_exactly_their_events(served: Served) -> None:
    uuid = served.creds["system_id"]
    await served.dispatch(served.update("before"))  # logged before anyone connects: nobody gets it
    await served.dep.work()
    async with (stream(served, params={"type": "UPDATE_MEMBER"}) as members,
                stream(served, token=STREAM, params=[("system", uuid), ("type", "UPDATE_SYSTEM")]) as systems,
                stream(served, params=[("system", "elsewhere"), ("system", "home"),
                                       ("type", "UPDATE_SYSTEM"), ("type", "UPDATE_MEMBER")]) as both,
                stream(served, params={"system": "elsewhere"}) as nobody):
        await served.dispatch(served.update("a"), served.rename_system("S1"), served.update("b"),
                              served.rename_system("S2"), served.update("c"))
        await served.dep.work()
        done = time.monotonic()
        logged = [r for r in await served.dep.logged() if r.data != {"name": "before"}]
        got_members, got_systems, got_both, got_nobody = (
            await members.until_quiet(done), await systems.until_quiet(done), await both.until_quiet(done),
            await nobody.until_quiet(done))
    assert _ids(got_members) == [r.id for r in logged if r.type == "UPDATE_MEMBER"]
    assert [m.envelope()["data"]["name"] for m in got_members] == ["a", "b", "c"]
    assert _ids(got_systems) == [r.id for r in logged if r.type == "UPDATE_SYSTEM"]
    assert {m.event for m in got_systems} == {"UPDATE_SYSTEM"}
    assert _ids(got_both) == [r.id for r in logged]
    assert got_nobody == []
    first = got_both[0].envelope()
    assert first["id"] == got_both[0].id and first["type"] == got_both[0].event == "UPDATE_MEMBER"
    assert first["system_id"] == uuid and first["source"] == "dispatch" and "entity" in first


async def test_reconnecting_with_last_event_id_across_100_events_gets_each_exactly_once(served: Served) -> None:
    async with stream(served) as first:
        # One worker logs these 50 to a transaction: many events share one logged_at.
        await served.dispatch(*(served.update(f"n{i}") for i in range(100)))
        await served.dep.work()
        before = await first.events(37)
    logged = await served.dep.logged()
    order = [r.id for r in sorted(logged, key=lambda r: (r.logged_at, r.id))]
    assert len(order) == 100 and len({r.logged_at for r in logged}) < 100
    assert _ids(before) == order[:37]
    last = before[-1].id
    assert last is not None
    async with (stream(served, headers={"Last-Event-ID": last}) as by_header,
                stream(served, params={"last_event_id": last}) as by_query):
        await served.dispatch(served.update("after"))  # and the stream goes on live
        await served.dep.work()
        done = time.monotonic()
        rest_header, rest_query = await by_header.until_quiet(done), await by_query.until_quiet(done)
    newest = [r.id for r in await served.dep.logged() if r.data == {"name": "after"}]
    assert _ids(rest_header) == _ids(rest_query) == order[37:] + newest
    assert sorted(_ids(before) + _ids(rest_header)) == sorted(order + newest)  # each once, none missed


async def test_an_unknown_last_event_id_is_refused(served: Served) -> None:
    async with httpx.AsyncClient() as client:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        for request in ({"headers": auth | {"Last-Event-ID": "evt_NOPE"}},
                        {"headers": auth, "params": {"last_event_id": "evt_NOPE"}}):
            answer = await client.get(served.url + "/api/stream", **request)  # type: ignore[arg-type]
            assert answer.status_code == 400 and "evt_NOPE" in answer.text


async def test_stream_auth_admin_or_stream_token(served: Served) -> None:
    async with httpx.AsyncClient() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": STREAM}):
            answer = await client.get(served.url + "/api/stream", headers=headers)
            assert answer.status_code == 401 and STREAM not in answer.text and ADMIN not in answer.text
        # The stream token opens the stream and nothing else.
        answer = await client.get(served.url + "/api/events", headers={"Authorization": f"Bearer {STREAM}"})
        assert answer.status_code == 401
    for token in (ADMIN, STREAM):
        async with stream(served, token=token):
            pass


@pytest.mark.parametrize(("admin", "stream_token", "expected"), [("", "", 404), ("", STREAM, 200), (ADMIN, "", 200)])
async def test_stream_is_off_only_without_both_tokens(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    admin: str, stream_token: str, expected: int,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk, admin=admin, stream=stream_token) as s:
        async with httpx.AsyncClient() as client:
            assert (await client.get(s.url + "/api/stream", headers={"Authorization": "Bearer guess"})).status_code \
                == (404 if expected == 404 else 401)
        if expected == 200:
            async with stream(s, token=admin or stream_token):
                pass


async def test_a_comment_comes_within_the_heartbeat_interval(served: Served) -> None:
    assert StreamSettings().heartbeat <= 15  # SPEC's bound, by default
    async with stream(served) as quiet:
        start = time.monotonic()
        beats = [await quiet.next() for _ in range(3)]
    assert [b.comment for b in beats] == ["keepalive"] * 3
    gaps = [b.at - a for a, b in zip([start, *[b.at for b in beats]], beats, strict=False)]
    assert max(gaps) < FAST.heartbeat + 0.5


async def test_an_event_committed_after_later_ones_is_still_sent_once(served: Served) -> None:
    """A worker stamps logged_at before its transaction commits; another may commit
    rows stamped later first. The late rows still go out on a live stream, once."""
    engine = db.create_engine(served.dep.live().current.database_url)
    now = datetime.now(UTC)

    async def log(event_id: str, logged_at: datetime) -> None:
        async with engine.begin() as conn:
            await conn.execute(db.events.insert().values(
                id=event_id, type="UPDATE_SYSTEM", source="dispatch", system="home", system_id=None,
                entity_id=None, received_at=now, data={}, entity=None, previous=None, logged_at=logged_at))

    early, late = new_event_id(), new_event_id()
    try:
        async with stream(served) as live:
            await log(late, now)
            [first] = await live.events(1)
            await log(early, now - timedelta(seconds=5))  # stamped first, committed after
            [second] = await live.events(1)
            done = time.monotonic()
            assert [first.id, second.id] == [late, early]
            assert await live.until_quiet(done) == []
    finally:
        await engine.dispose()


# --- one shared tail, bounded streams, readers without the write lock ---------------


async def _log(url: str, count: int, *, pad: int = 0) -> list[str]:
    """`count` events logged in one transaction, as a worker logs a batch (one logged_at)."""
    engine = db.create_engine(url)
    now = datetime.now(UTC)
    ids = [new_event_id() for _ in range(count)]
    try:
        async with engine.begin() as conn:
            await conn.execute(db.events.insert(), [
                {"id": i, "type": "UPDATE_SYSTEM", "source": "dispatch", "system": "home", "system_id": None,
                 "entity_id": None, "received_at": now, "data": {"pad": "x" * pad}, "entity": None,
                 "previous": None, "logged_at": now} for i in ids])
    finally:
        await engine.dispose()
    return ids


def _url(served: Served) -> str:
    return served.dep.live().current.database_url


async def _log_order(served: Served) -> list[str]:
    return [r.id for r in sorted(await served.dep.logged(), key=lambda r: (r.logged_at, r.id))]


async def test_fifty_streams_cost_one_log_read_per_poll_interval_and_no_write_lock(served: Served) -> None:
    engine = served.app.state.relay.engine
    statements: list[tuple[float, str]] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append((time.monotonic(), " ".join(statement.split())))

    sa_event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(stream(served)) for _ in range(50)]
            start = time.monotonic()
            logged: list[str] = []
            for _ in range(3):
                writing = time.monotonic()
                logged += await _log(_url(served), 1)
                assert time.monotonic() - writing < 5  # 50 streams connected do not hold a writer up
            got = [await s.events(3) for s in streams]
            await asyncio.sleep(1)
            end = time.monotonic()
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert all(_ids(g) == logged for g in got)
    window = [s for at, s in statements if start <= at <= end]
    reads = [s for s in window if s.startswith("SELECT") and "FROM events" in s]
    intervals = (end - start) / FAST.poll_interval
    assert 5 <= len(reads) <= intervals + 1, (len(reads), intervals)
    assert not [s for _, s in statements if "IMMEDIATE" in s]


async def test_a_stream_is_served_while_another_connection_holds_the_write_lock(served: Served) -> None:
    [first] = await _log(_url(served), 1)
    async with stream(served) as live:
        [second] = await _log(_url(served), 1)
        writer = sqlite3.connect(_url(served).split(":///", 1)[1], isolation_level=None, timeout=1)
        try:
            writer.execute("BEGIN IMMEDIATE")
            assert _ids(await live.events(1, timeout=5)) == [second]
            async with stream(served, headers={"Last-Event-ID": first}) as resumed:
                assert _ids(await resumed.events(1, timeout=5)) == [second]
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.get(served.url + "/api/events", headers={"Authorization": f"Bearer {ADMIN}"})
                assert answer.status_code == 200 and {e["id"] for e in answer.json()} == {first, second}
        finally:
            writer.execute("ROLLBACK")
            writer.close()


async def test_streams_beyond_max_streams_get_429_until_one_leaves(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk, server={"max_streams": 3}) as s:
        async with AsyncExitStack() as stack:
            held = [await stack.enter_async_context(stream(s)) for _ in range(3)]
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.get(s.url + "/api/stream", headers={"Authorization": f"Bearer {ADMIN}"})
            assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0
            assert "max_streams" in answer.json()["detail"]
            await held[0].close()
            await stack.aclose()  # every one leaves: the tail stops; a new one starts it again

            async def accepted() -> bool:
                async with httpx.AsyncClient(timeout=5) as client:
                    async with client.stream("GET", s.url + "/api/stream",
                                             headers={"Authorization": f"Bearer {ADMIN}"}) as response:
                        return response.status_code == 200
            await until(accepted, 10, "a stream accepted again")
        async with AsyncExitStack() as stack:
            again = [await stack.enter_async_context(stream(s)) for _ in range(3)]
            logged = await _log(_url(s), 2)
            assert all([_ids(await a.events(2)) == logged for a in again])


async def test_a_reader_that_falls_behind_is_disconnected_without_delaying_the_others(served: Served) -> None:
    served.app.state.stream = StreamSettings(poll_interval=0.05, heartbeat=0.3, settle=0.1, queue_size=50)
    hub = served.app.state.streams
    port = int(served.url.rsplit(":", 1)[1])
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port))
    slow.sendall(f"GET /api/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n".encode())
    await until(lambda: hub.slots == 1, 10, "the slow reader connected")
    async with stream(served) as fast, stream(served, token=STREAM) as other:
        logged = await _log(_url(served), 600, pad=8000)  # more than the slow reader's buffers hold
        started = time.monotonic()
        got_fast, got_other = await fast.events(600), await other.events(600)
        assert time.monotonic() - started < 10
        last = await _log(_url(served), 1)  # the slow reader is 50 behind when this is handed out
        assert _ids(await fast.events(1)) == _ids(await other.events(1)) == last
        await until(lambda: hub.dropped == 1, 10, "the slow reader dropped")
    assert _ids(got_fast) == _ids(got_other) == logged

    def read_to_the_end() -> bytes:
        slow.settimeout(20)
        chunks = []
        while chunk := slow.recv(65536):
            chunks.append(chunk)
            if b"\r\n0\r\n\r\n" in chunks[-1][-16:] or b"".join(chunks[-2:]).endswith(b"\r\n0\r\n\r\n"):
                break
        return b"".join(chunks)

    try:
        raw = await asyncio.to_thread(read_to_the_end)
    finally:
        slow.close()
    assert raw.endswith(b"0\r\n\r\n")  # the server ended the stream
    sent = [line[4:].decode() for line in raw.split(b"\r\n") if line.startswith(b"id: ")]
    assert sent == logged[:len(sent)] and len(sent) < len(logged)  # what it got: resumable from its last id
    await until(lambda: hub.slots == 0, 10, "every slot free")


async def test_resuming_while_events_are_logged_loses_and_repeats_nothing(served: Served) -> None:
    served.app.state.stream = StreamSettings(poll_interval=0.05, heartbeat=0.3, settle=0.1, catch_up_page=7)
    async with stream(served):  # the tail runs before, during and after the resume
        for _ in range(12):
            await _log(_url(served), 5)
        order = await _log_order(served)
        resume = order[19]

        async def keep_logging() -> None:
            for _ in range(30):
                await _log(_url(served), 2)
                await asyncio.sleep(0.01)

        logger = asyncio.create_task(keep_logging())
        async with stream(served, headers={"Last-Event-ID": resume}) as resumed:
            await logger
            done = time.monotonic()
            rest = await resumed.until_quiet(done)
    order = await _log_order(served)
    assert len(order) == 120
    assert _ids(rest) == order[20:]
