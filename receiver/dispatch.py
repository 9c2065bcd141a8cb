"""POST {dispatch_path}: verify a PluralKit dispatch and make it durable, fast.

Byte-identical re-deliveries are kept as separate events. PluralKit's sender never
retries and sends no event id, while two identical bodies are routinely two real
events (the same member edited twice to the same value, two latch-mode messages),
so dropping one would lose a real change to avoid a duplicate that cannot happen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import msgspec
from litestar import Request, Response, post
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler

from pkrelay import queue
from pkrelay.config import SystemConfig
from pkrelay.envelope import new_event_id
from pkrelay.pluralkit.dispatch import Dispatch, decode_data
from receiver.dashboard import pings
from receiver.metrics import EVENTS_RECEIVED
from receiver.relay import Relay

log = logging.getLogger("pkrelay.receiver")

_decode = msgspec.json.Decoder(Dispatch).decode
_OK = b'{"status":"ok"}'


def _answer(status: int, message: str | None = None) -> Response[bytes]:
    body = _OK if message is None else msgspec.json.encode({"error": message})
    return Response(body, status_code=status, media_type="application/json")


def authenticate(systems: Sequence[SystemConfig], system_id: str | None, token: str | None) -> SystemConfig | None:
    """The configured system this token belongs to, or None.

    Every configured token is compared (in constant time) whatever the body claims,
    so an unknown system and a wrong token take the same time and get the same 401.
    """
    if not token:
        return None
    found = None
    for system in systems:
        if system.signing_token.matches(token) and found is None:
            if not system.system_id or system_id is None or system.system_id == system_id:
                found = system
    return found


def dispatch_handler(path: str) -> HTTPRouteHandler:
    @post(
        path,
        status_code=200,
        summary="Receive a PluralKit dispatch webhook",
        description="200 once the event is durable (queued or spooled); 401 wrong token; 400 bad body; "
        "413 too large; 503 when neither the queue nor the spool can take it.",
    )
    async def receive_dispatch(request: Request) -> Response[bytes]:
        relay: Relay = request.app.state.relay
        try:
            body = await request.body()
        except HTTPException as exc:
            if exc.status_code == 413:
                EVENTS_RECEIVED.labels("-", "too_large").inc()
                return _answer(413, "body larger than server.max_body_bytes")
            raise
        try:
            dispatch = _decode(body)
        except msgspec.DecodeError as exc:
            EVENTS_RECEIVED.labels("-", "invalid").inc()
            return _answer(400, f"not a dispatch body: {exc}")
        system = authenticate(relay.live.current.systems, dispatch.system_id, dispatch.signing_token)
        if dispatch.type == "PING":  # the dashboard's "connect a system" page shows these
            await pings.record(relay.redis, dispatch.system_id, system)
        if system is None:
            EVENTS_RECEIVED.labels("-", "unauthorized").inc()
            return _answer(401, "unauthorized")
        if dispatch.type == "PING":
            EVENTS_RECEIVED.labels("PING", "ping").inc()
            return _answer(200)
        try:
            decode_data(dispatch.type, dispatch.data)
        except msgspec.DecodeError as exc:
            EVENTS_RECEIVED.labels(dispatch.type, "invalid").inc()
            return _answer(400, f"data does not match {dispatch.type}: {exc}")
        received_ms = time.time_ns() // 1_000_000
        event_id = new_event_id(received_ms)
        payload = queue.encode(queue.QueuedDispatch(
            event_id=event_id,
            received_ms=received_ms,
            system=system.name,
            type=dispatch.type,
            system_id=dispatch.system_id or system.system_id or None,
            entity_id=dispatch.id,
            data=bytes(dispatch.data) or b"null",
        ))
        outcome = await relay.store(event_id, system.name, payload)
        EVENTS_RECEIVED.labels(dispatch.type, outcome).inc()
        if outcome == "unavailable":
            return _answer(503, "the event could not be stored; nothing was kept")
        return _answer(200)

    return receive_dispatch
