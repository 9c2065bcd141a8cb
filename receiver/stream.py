"""GET /api/stream: the event log as Server-Sent Events, live and resumable.

The database is the source of truth, so a reconnect can resume from any event still
in the log. One shared tail per receiver process (StreamHub, receiver/stream_hub.py) follows the log for every
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
* the window re-read on every poll reaches `eventlog.FOLLOW_OVERLAP` back, so a row committed later
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
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import Request, get
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from pkrelay.store import eventlog
from pkrelay.store.eventlog import Position
from receiver.relay import Relay
from receiver.stream_hub import Item, Joined, StreamHub, StreamSettings, Subscriber

log = logging.getLogger("pkrelay.stream")
WRITE_BATCH = 64  # events a stream sends in one write, at most


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
            # A few at a time, in one write: what waits stays in the queue, where the tail
            # sees how far behind this reader is.
            while subscriber.items:
                batch: list[ServerSentEventMessage] = []
                while subscriber.items and len(batch) < WRITE_BATCH:
                    item = subscriber.items.popleft()
                    if item.event.id not in subscriber.skip:
                        batch.append(item.message(named))
                if batch:
                    yield batch[0] if len(batch) == 1 else Joined(batch)
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
