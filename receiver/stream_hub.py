"""The shared tail of the event log behind every /api/stream of one receiver process.

One task follows the log (eventlog.Follower) while any stream is connected, one read
per poll interval however many are, and hands each new event to every stream whose
filters take it, the envelope encoded once. A stream whose queue is full (a reader
that does not keep up) is disconnected rather than slowing the others; it resumes
with Last-Event-ID (receiver/stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime

import msgspec
from litestar import Litestar
from litestar.exceptions import (
    TooManyRequestsException,
)
from litestar.response import ServerSentEventMessage
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from pkrelay.envelope import Event
from pkrelay.store import eventlog
from pkrelay.store.eventlog import Logged, Position

log = logging.getLogger("pkrelay.stream")
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


class Joined(ServerSentEventMessage):
    """Several messages sent in one write: a reader with a queue sends it at once, not
    one ASGI message (and one socket write) per event."""

    def __init__(self, messages: list[ServerSentEventMessage]) -> None:
        super().__init__(data=None)
        self._bytes = b"".join(m.encode() for m in messages)

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
