"""GET /api/stream: the event log as Server-Sent Events, live and resumable.

The database is the source of truth, so a reconnect can resume from any event still
in the log. Each connection polls the log by the time rows were logged, (logged_at,
id) order, as `pkrelay events --follow` does: ids sort by arrival, and an event whose
enrichment waited is logged after later ids. Two more things make the order stable
enough to resume from:

* a row is sent only once it is `settle` seconds old, so a transaction that stamped
  its rows slightly before another but committed slightly after still lands in
  (logged_at, id) order;
* the window re-read on every poll reaches `OVERLAP` back, so a row committed later
  than that still goes out (never missed), once per connection.

`Last-Event-ID` names the last event a client got: rows up to its (logged_at, id)
present at reconnect count as sent, everything after it goes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from litestar import Request, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from pkrelay import db
from pkrelay.envelope import Event
from pkrelay.store import eventlog
from receiver.relay import Relay

log = logging.getLogger("pkrelay.stream")
OVERLAP = eventlog.FOLLOW_OVERLAP
Position = tuple[datetime, str]


@dataclass
class StreamSettings:
    """Timings of every stream this app serves (tests shorten them)."""

    poll_interval: float = 0.25
    heartbeat: float = 15.0  # SPEC: a comment line at least every 15 s
    settle: float = 1.0


class LogCursor:
    """One connection's place in the log: the newest log time read and the ids sent
    within the overlap window behind it."""

    def __init__(self, engine: AsyncEngine, systems: list[str], types: list[str], settle: float) -> None:
        self.engine, self.systems, self.types = engine, systems, types
        self.settle = timedelta(seconds=settle)
        self.newest: datetime | None = None
        self.seen: dict[str, datetime] = {}

    async def _rows(self, since: datetime | None, until: datetime | None) -> list[tuple[Event, datetime]]:
        t = db.events
        stmt = sa.select(t).where(t.c.logged_at.is_not(None))
        if self.systems:
            stmt = stmt.where(sa.or_(t.c.system.in_(self.systems), t.c.system_id.in_(self.systems)))
        if self.types:
            stmt = stmt.where(t.c.type.in_(self.types))
        if since is not None:
            stmt = stmt.where(t.c.logged_at >= since)
        if until is not None:
            stmt = stmt.where(t.c.logged_at <= until)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt.order_by(t.c.logged_at, t.c.id))).all()
        return [(eventlog.row_to_event(r), r.logged_at) for r in rows]

    async def start_now(self) -> None:
        """From now on: whatever the log holds already counts as sent."""
        async with self.engine.connect() as conn:
            newest = (await conn.execute(sa.select(sa.func.max(db.events.c.logged_at)))).scalar()
        if newest is None:
            return
        self.newest = newest
        for event, logged_at in await self._rows(self.newest - OVERLAP, None):
            self.seen[event.id] = logged_at

    async def start_after(self, position: Position) -> None:
        """Resume: rows up to `position` among those present now count as sent."""
        self.newest = position[0]
        for event, logged_at in await self._rows(position[0] - OVERLAP, None):
            if (logged_at, event.id) <= position:
                self.seen[event.id] = logged_at

    async def read(self) -> list[Event]:
        """The settled rows not sent yet, in (logged_at, id) order."""
        since = self.newest - OVERLAP if self.newest else None
        new = []
        for event, logged_at in await self._rows(since, datetime.now(UTC) - self.settle):
            self.newest = max(self.newest or logged_at, logged_at)
            if event.id not in self.seen:
                self.seen[event.id] = logged_at
                new.append(event)
        if self.newest:
            horizon = self.newest - OVERLAP
            self.seen = {i: at for i, at in self.seen.items() if at >= horizon}
        return new


async def _messages(cursor: LogCursor, settings: StreamSettings, named: bool) -> AsyncIterator[ServerSentEventMessage]:
    # A first comment at once: proxies and clients see the stream is open, and a
    # client knows that what is logged from here on will reach it.
    yield ServerSentEventMessage(data=None, comment="connected")
    last_comment = time.monotonic()
    while True:
        try:
            # Shielded: a client that leaves cancels this generator, and a read cut
            # off mid-transaction would leave its connection (on SQLite, the write
            # lock its BEGIN IMMEDIATE took) held until garbage collection.
            events = await asyncio.shield(asyncio.ensure_future(cursor.read()))
        except (SQLAlchemyError, OSError) as exc:
            log.warning("event stream: the database did not answer: %s", type(exc).__name__)
            events = []
        for event in events:
            yield ServerSentEventMessage(data=msgspec.json.encode(event).decode(), event=event.type if named else None,
                                         id=event.id)
        if time.monotonic() - last_comment >= settings.heartbeat:
            yield ServerSentEventMessage(data=None, comment="keepalive")
            last_comment = time.monotonic()
        await asyncio.sleep(min(settings.poll_interval, settings.heartbeat))


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
    cursor = LogCursor(relay.engine, systems, types, settings.settle)
    resume = request.headers.get("last-event-id") or resume
    if resume:
        position = await eventlog.logged_position(relay.engine, resume)
        if position is None:
            raise ValidationException(f"unknown event id {resume[:64]!r}: it is not in the log")
        await cursor.start_after(position)
    else:
        await cursor.start_now()
    return ServerSentEvent(_messages(cursor, settings, named), headers={"X-Accel-Buffering": "no"})


@get("/api/stream", guards=[stream_access], summary="Every logged event, live, as Server-Sent Events",
     responses={
         400: ResponseSpec(None, description="Last-Event-ID names no logged event"),
         401: ResponseSpec(None, description="neither the admin token nor server.stream_token"),
         404: ResponseSpec(None, description="the stream is off: admin_token and stream_token are empty"),
     })
async def event_stream(
    request: Request[Any, Any, Any],
    system: Annotated[list[str] | None, QueryParameter(description="system name or UUID (repeatable)")] = None,
    event_type: Annotated[list[str] | None, QueryParameter(name="type", description="event type (repeatable)")] = None,
    last_event_id: Annotated[str | None, QueryParameter(description="resume after this event (or the header)")] = None,
) -> ServerSentEvent:
    return await open_stream(request, system or [], event_type or [], last_event_id)
