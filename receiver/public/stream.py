"""GET /public/{name}/front/stream: the public front as Server-Sent Events.

It joins the shared tail of the log (receiver/stream_hub.py) with a subscriber that
takes only this system's switch events and edits of the system or of a member listed
as fronting; on each, it reads the front again and sends it only when the public
object changed (an edit of a private field changes nothing shown, and sends nothing).
Counted against server.max_streams with every other stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator

from litestar.response import ServerSentEvent, ServerSentEventMessage

from pkrelay.config import SystemConfig
from pkrelay.envelope import Event
from receiver.public import front
from receiver.relay import Relay
from receiver.stream_hub import StreamHub, StreamSettings, Subscriber

# What may change the public front: a switch, the system, an import.
FRONT_TYPES = frozenset({"CREATE_SWITCH", "UPDATE_SWITCH", "DELETE_SWITCH", "DELETE_ALL_SWITCHES",
                         "UPDATE_SYSTEM", "SUCCESSFUL_IMPORT"})
# ... and these, when they name a member listed as fronting.
MEMBER_TYPES = frozenset({"UPDATE_MEMBER", "DELETE_MEMBER"})
QUEUE = 256  # events waiting (each only a reason to read again) before the reader is dropped


class FrontSubscriber(Subscriber):
    """This system's events that may change its public front."""

    def __init__(self, system: SystemConfig, uuid: str | None) -> None:
        super().__init__([system.name, *([uuid] if uuid else [])], FRONT_TYPES | MEMBER_TYPES, QUEUE)
        self.fronting: frozenset[str] = frozenset()

    def wants(self, event: Event, system: str | None) -> bool:
        if not super().wants(event, system):
            return False
        return event.type in FRONT_TYPES or event.entity_id in self.fronting


def _close(hub: StreamHub, subscriber: FrontSubscriber) -> None:
    if not subscriber.closed:
        subscriber.closed = True
        hub.release(subscriber)


async def _messages(relay: Relay, hub: StreamHub, subscriber: FrontSubscriber, settings: StreamSettings,
                    name: str, first: front.Front) -> AsyncIterator[ServerSentEventMessage]:
    try:
        sent = first
        yield ServerSentEventMessage(data=first.body.decode())
        last_write = time.monotonic()
        while True:
            while subscriber.items:
                subscriber.items.clear()  # each only says: read again
                system = front.public_system(relay, name)
                if system is None:
                    return  # no longer public (the config was reloaded)
                now = await front.read(relay, system)
                subscriber.fronting = now.fronting
                if now.etag != sent.etag:
                    sent = now
                    yield ServerSentEventMessage(data=now.body.decode())
                    last_write = time.monotonic()
            subscriber.wake.clear()
            if subscriber.skip:
                hub.forget_passed(subscriber)
            if subscriber.dropped:
                return  # behind, or the server stops: the browser reconnects
            if time.monotonic() - last_write >= settings.heartbeat:
                yield ServerSentEventMessage(data=None, comment="keepalive")
                last_write = time.monotonic()
            if not subscriber.items:
                wait = settings.heartbeat - (time.monotonic() - last_write)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscriber.wake.wait(), max(wait, 0))
    finally:
        _close(hub, subscriber)


async def open_front_stream(relay: Relay, hub: StreamHub, settings: StreamSettings,
                            system: SystemConfig) -> ServerSentEvent:
    """The stream of one connection: the front now, then each change (429 when
    server.max_streams streams are connected)."""
    hub.reserve(relay.live.current.server.max_streams)
    subscriber = FrontSubscriber(system, system.system_id or (await relay.pins.refresh()).get(system.name))
    try:
        await hub.join(subscriber, settings, None)  # first, so no change between the read and the join is lost
        subscriber.items.clear()
        first = await front.read(relay, system)
        subscriber.fronting = first.fronting
    except BaseException:
        _close(hub, subscriber)
        raise
    messages = _messages(relay, hub, subscriber, settings, system.name, first)
    weakref.finalize(messages, _close, hub, subscriber)  # a response never started frees its slot too
    return ServerSentEvent(messages, headers={"X-Accel-Buffering": "no"})
