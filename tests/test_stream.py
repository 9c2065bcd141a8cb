"""GET /api/stream as an integration consumes it: a real uvicorn, a streaming HTTP client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from pkrelay import db
from pkrelay.envelope import new_event_id
from pkrelay.redis_server import EmbeddedRedis, free_port
from receiver.stream import StreamSettings
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.harness import Deployment
from tests.servers import ThreadedServer

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

    async def events(self, count: int) -> list[Message]:
        got: list[Message] = []
        while len(got) < count:
            message = await self.next()
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
