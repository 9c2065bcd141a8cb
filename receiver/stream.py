"""GET /api/stream: the event log as Server-Sent Events, live and resumable.

The database is the source of truth, so a reconnect can resume from any event still
in the log. One shared tail per receiver process (StreamHub) follows the log for every
connected stream, as `pkrelay events --follow` does (eventlog.Follower): one read per
poll interval in all, however many streams are connected, and none while none is. It
fans each new event out to every stream whose filters take it, the envelope encoded
once; a stream whose queue is full (a reader that does not keep up) is disconnected
rather than slowing the others, and resumes with Last-Event-ID.

Rows go out in the order they were logged, (logged_at, id): ids sort by arrival, and
an event whose enrichment waited is logged after later ids. Two more things make the
order stable enough to resume from:

* a row is sent only once it is `settle` seconds old, so a transaction that stamped
  its rows slightly before another but committed slightly after still lands in
  (logged_at, id) order;
* the window re-read on every poll reaches `OVERLAP` back, so a row committed later
  than that still goes out (never missed), once per connection.

`Last-Event-ID` names the last event a client got: rows up to its (logged_at, id)
present at reconnect count as sent, everything after it goes out. Such a stream joins
the tail first (buffering what it hands out), then catches up from the database by
pages, then sends what the tail buffered; the ids it must not send twice (present at
connection, or sent while catching up) are kept only until the tail is past them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, get
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    NotFoundException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from pkrelay.envelope import Event
from pkrelay.store import eventlog
from pkrelay.store.eventlog import Logged, Position
from receiver.relay import Relay

log = logging.getLogger("pkrelay.stream")
OVERLAP = eventlog.FOLLOW_OVERLAP
RETRY_AFTER_S = 5  # what a stream refused for max_streams is told to wait


@dataclass
class StreamSettings:
    """Timings and bounds of every stream this app serves (tests shorten them)."""

    poll_interval: float = 0.25
    heartbeat: float = 15.0  # SPEC: a comment line at least every 15 s
    settle: float = 1.0
    queue_size: int = 2000  # events a stream may have waiting before it is disconnected
    catch_up_page: int = 500  # rows per read of a stream catching up after Last-Event-ID


class _Shared(ServerSentEventMessage):
    """A message whose bytes are encoded once, for every stream that sends it."""

    def __init__(self, data: str, event: str | None, event_id: str) -> None:
        super().__init__(data=data, event=event, id=event_id)
        self._bytes = super().encode()

    def encode(self) -> bytes:
        return self._bytes


class Item:
    """One logged event as the streams send it: its envelope JSON encoded once, on demand."""

    __slots__ = ("_messages", "event", "logged_at", "system")

    def __init__(self, logged: Logged) -> None:
        self.event, self.logged_at, self.system = logged
        self._messages: dict[bool, _Shared] = {}

    def message(self, named: bool) -> ServerSentEventMessage:
        message = self._messages.get(named)
        if message is None:
            other = self._messages.get(not named)
            data = str(other.data) if other else msgspec.json.encode(self.event).decode()
            message = self._messages[named] = _Shared(data, self.event.type if named else None, self.event.id)
        return message


class Subscriber:
    """One connected stream: its filters and the events handed to it, not sent yet."""

    def __init__(self, systems: Iterable[str], types: Iterable[str], limit: int) -> None:
        self.systems, self.types, self.limit = frozenset(systems), frozenset(types), limit
        self.items: deque[Item] = deque()
        self.wake = asyncio.Event()
        self.dropped = False  # fell behind, or the server stops: the stream ends
        # Ids not to send (again) that the tail may still hand over: those present at
        # connection (and, resuming, up to Last-Event-ID) and those sent catching up.
        self.skip: dict[str, datetime] = {}
        self.floor: datetime | None = None  # the tail's horizon when it joined
        self.closed = False

    def wants(self, event: Event, system: str | None) -> bool:
        return ((not self.systems or system in self.systems or event.system_id in self.systems)
                and (not self.types or event.type in self.types))

class StreamHub:
    """Every stream of this process, and the one tail that reads the log for them all.

    `slots` counts connected streams (server.max_streams bounds it); the tail runs
    while there is one, reading once per poll interval."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.slots = 0
        self.dropped = 0  # streams disconnected for falling behind, since start
        self._subscribers: set[Subscriber] = set()
        self._follower: eventlog.Follower | None = None
        self._started: asyncio.Future[None] | None = None
        self._tail: asyncio.Task[None] | None = None

    @property
    def horizon(self) -> datetime | None:
        return self._follower.horizon if self._follower else None

    def reserve(self, limit: int) -> None:
        """Count one more stream, or refuse it (429) when `limit` are connected."""
        if self.slots >= limit:
            raise TooManyRequestsException(f"{limit} streams are connected, the most server.max_streams allows",
                                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self.slots += 1

    def release(self, subscriber: Subscriber | None) -> None:
        self.slots -= 1
        if subscriber is not None:
            self._subscribers.discard(subscriber)
            subscriber.dropped = True  # a stream never started still ends
            subscriber.items.clear()

    async def join(self, subscriber: Subscriber, settings: StreamSettings, resume: Position | None) -> None:
        """Start handing `subscriber` what the tail reads: everything logged from now
        on, or after `resume` (then `catch_up` sends what the log holds already)."""
        if self._tail is None:
            tail = eventlog.Follower(self.engine, settle=settings.settle)
            self._follower, self._started = tail, asyncio.ensure_future(tail.start())
            self._tail = asyncio.create_task(self._run(tail, self._started, settings.poll_interval))
        follower, started = self._follower, self._started
        assert follower is not None and started is not None
        await asyncio.shield(started)
        self._subscribers.add(subscriber)
        subscriber.floor = follower.horizon
        present = await eventlog.logged_ids(self.engine, follower.horizon)
        if resume is not None:
            present = {i: at for i, at in present.items() if (at, i) <= resume}
        # What the tail handed over meanwhile and was present counts as sent; what it
        # has handed out before is never handed out again.
        subscriber.items = deque(item for item in subscriber.items if item.event.id not in present)
        subscriber.skip = {i: at for i, at in present.items() if i not in follower.seen}

    def forget_passed(self, subscriber: Subscriber) -> None:
        """Drop the skipped ids the tail can no longer hand over (call when the queue is empty)."""
        follower, horizon = self._follower, self.horizon
        if follower is not None:
            subscriber.skip = {i: at for i, at in subscriber.skip.items()
                               if i not in follower.seen and (horizon is None or at >= horizon)}

    async def _run(self, follower: eventlog.Follower, started: asyncio.Future[None], interval: float) -> None:
        try:
            await started
            while self.slots:
                await asyncio.sleep(interval)
                if not self.slots:
                    break
                try:
                    # Shielded: a read cut off mid-transaction would hold its connection.
                    logged = await asyncio.shield(follower.read())
                except (SQLAlchemyError, OSError) as exc:
                    log.warning("event stream: the database did not answer: %s", type(exc).__name__)
                    continue
                if logged:
                    self._fan_out([Item(x) for x in logged])
        finally:
            if self._tail is asyncio.current_task():
                self._tail = self._follower = self._started = None

    def _fan_out(self, items: list[Item]) -> None:
        for subscriber in list(self._subscribers):
            if len(subscriber.items) >= subscriber.limit:
                log.warning("event stream: a reader fell %d events behind; disconnecting it", len(subscriber.items))
                self.dropped += 1
                self._subscribers.discard(subscriber)
                subscriber.items.clear()
                subscriber.dropped = True
                subscriber.wake.set()
                continue
            wanted = [item for item in items if subscriber.wants(item.event, item.system)]
            if wanted:
                subscriber.items.extend(wanted)
                subscriber.wake.set()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for subscriber in list(self._subscribers):
                self._subscribers.discard(subscriber)
                subscriber.dropped = True
                subscriber.wake.set()
            if self._tail is not None:
                self._tail.cancel()
                await asyncio.gather(self._tail, return_exceptions=True)


async def _catch_up(hub: StreamHub, subscriber: Subscriber, settings: StreamSettings, after: Position,
                    named: bool) -> AsyncIterator[ServerSentEventMessage]:
    """What the log holds after `after` and has settled, by pages; the ids sent that the
    tail may still hand over are added to the subscriber's skip."""
    until = datetime.now(UTC) - timedelta(seconds=settings.settle)
    floor = subscriber.floor  # what the tail handed over since joining is not older
    while not subscriber.dropped:
        page = await asyncio.shield(asyncio.ensure_future(
            eventlog.logged_after(hub.engine, after, until, settings.catch_up_page)))
        for logged in page:
            if floor is None or logged.logged_at >= floor:
                subscriber.skip[logged.event.id] = logged.logged_at
            if subscriber.wants(logged.event, logged.system):
                yield Item(logged).message(named)
            after = logged.position
        if len(page) < settings.catch_up_page:
            return


async def _messages(hub: StreamHub, subscriber: Subscriber, settings: StreamSettings, resume: Position | None,
                    named: bool) -> AsyncIterator[ServerSentEventMessage]:
    try:
        # A first comment at once: proxies and clients see the stream is open, and a
        # client knows that what is logged from here on will reach it.
        yield ServerSentEventMessage(data=None, comment="connected")
        last_comment = time.monotonic()
        if resume is not None:
            async for message in _catch_up(hub, subscriber, settings, resume, named):
                yield message
                if time.monotonic() - last_comment >= settings.heartbeat:
                    yield ServerSentEventMessage(data=None, comment="keepalive")
                    last_comment = time.monotonic()
        while True:
            # One at a time: what waits stays in the queue, where the tail sees how far
            # behind this reader is.
            while subscriber.items:
                item = subscriber.items.popleft()
                if item.event.id not in subscriber.skip:
                    yield item.message(named)
            subscriber.wake.clear()
            if subscriber.skip:
                hub.forget_passed(subscriber)
            if subscriber.dropped:
                return  # behind, or the server stops: the client resumes with Last-Event-ID
            if time.monotonic() - last_comment >= settings.heartbeat:
                yield ServerSentEventMessage(data=None, comment="keepalive")
                last_comment = time.monotonic()
            if not subscriber.items:
                wait = settings.heartbeat - (time.monotonic() - last_comment)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscriber.wake.wait(), max(wait, 0))
    finally:
        _close(hub, subscriber)


def _close(hub: StreamHub, subscriber: Subscriber) -> None:
    if not subscriber.closed:
        subscriber.closed = True
        hub.release(subscriber)


def stream_access(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """404 while neither token is set; the admin or stream token as Bearer."""
    server = connection.app.state.relay.live.current.server
    if not server.admin_token and not server.stream_token:
        raise NotFoundException()
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and (server.admin_token.matches(given) or server.stream_token.matches(given)):
        return
    raise NotAuthorizedException("a valid admin or stream token is required", headers={"WWW-Authenticate": "Bearer"})


async def open_stream(request: Request[Any, Any, Any], systems: list[str], types: list[str], resume: str | None, *,
                      named: bool = True) -> ServerSentEvent:
    """The stream for one connection, from now or after its Last-Event-ID (the header,
    else `resume`); 400 for an id the log does not hold.

    `named` messages carry `event: <type>`; the dashboard's unnamed ones all reach an
    EventSource's onmessage, whatever the type.
    """
    relay: Relay = request.app.state.relay
    settings: StreamSettings = request.app.state.stream
    hub: StreamHub = request.app.state.streams
    hub.reserve(relay.live.current.server.max_streams)
    subscriber = Subscriber(systems, types, settings.queue_size)
    try:
        position = None
        resume = request.headers.get("last-event-id") or resume
        if resume:
            position = await eventlog.logged_position(relay.engine, resume)
            if position is None:
                raise ValidationException(f"unknown event id {resume[:64]!r}: it is not in the log")
        await hub.join(subscriber, settings, position)
    except BaseException:
        _close(hub, subscriber)
        raise
    messages = _messages(hub, subscriber, settings, position, named)
    # A response never started never runs the generator's `finally`: free its slot then.
    weakref.finalize(messages, _close, hub, subscriber)
    return ServerSentEvent(messages, headers={"X-Accel-Buffering": "no"})


@get("/api/stream", guards=[stream_access], summary="Every logged event, live, as Server-Sent Events",
     responses={
         400: ResponseSpec(None, description="Last-Event-ID names no logged event"),
         401: ResponseSpec(None, description="neither the admin token nor server.stream_token"),
         429: ResponseSpec(None, description="server.max_streams streams are connected; see Retry-After"),
         404: ResponseSpec(None, description="the stream is off: admin_token and stream_token are empty"),
     })
async def event_stream(
    request: Request[Any, Any, Any],
    system: Annotated[list[str] | None, QueryParameter(description="system name or UUID (repeatable)")] = None,
    event_type: Annotated[list[str] | None, QueryParameter(name="type", description="event type (repeatable)")] = None,
    last_event_id: Annotated[str | None, QueryParameter(description="resume after this event (or the header)")] = None,
) -> ServerSentEvent:
    return await open_stream(request, system or [], event_type or [], last_event_id)
