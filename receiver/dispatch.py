"""POST {dispatch_path}: verify a PluralKit dispatch and make it durable, fast.

Byte-identical re-deliveries are kept as separate events. PluralKit's sender never
retries and sends no event id, while two identical bodies are routinely two real
events (the same member edited twice to the same value, two latch-mode messages),
so dropping one would lose a real change to avoid a duplicate that cannot happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from pkrelay import pins, queue
from pkrelay.config import Secret, SystemConfig
from pkrelay.envelope import new_event_id
from pkrelay.pluralkit.dispatch import Dispatch, decode_data, malformed
from receiver.dashboard import pings
from receiver.metrics import EVENTS_RECEIVED
from receiver.relay import Relay

log = logging.getLogger("pkrelay.receiver")

_decode = msgspec.json.Decoder(Dispatch).decode
_OK = b'{"status":"ok"}'
# What a body that is not JSON of the dispatch shape raises: invalid UTF-8 is not a
# DecodeError, and nesting deeper than msgspec's limit is a RecursionError.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

# An oversized body is read and thrown away (up to this much, for this long) before
# the 413, so the client hears it: closing on unread data resets the connection, and
# the client sees that instead of the answer.
DRAIN_LIMIT = 16 * 1024 * 1024
DRAIN_TIMEOUT_S = 10.0


async def read_body(request: Request[Any, Any, Any], limit: int) -> bytes | None:
    """The body, or None when it is longer than `limit` (by Content-Length or as sent)."""
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > limit
    if too_large and (int(declared) > DRAIN_LIMIT or request.headers.get("expect", "").lower() == "100-continue"):
        return None  # not worth draining, or the client waits for our answer before sending
    chunks: list[bytes] = []
    size, more = 0, True
    while more and not too_large:
        message = await request.receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client left; what it sent is all there is
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        too_large = size > limit
        chunks.append(chunk)
    if not too_large:
        return b"".join(chunks)
    chunks.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while more and size <= DRAIN_LIMIT:
                message = await request.receive()
                if message["type"] != "http.request":
                    break
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
    return None


class Throttle:
    """At most one log line per reason per `interval`, so a stranger posting bad
    tokens cannot flood the log; the next line says how many were left out."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def allow(self, reason: str) -> int | None:
        """None to stay quiet; else how many were left out since the last line."""
        now = time.monotonic()
        if now - self._last.get(reason, -self.interval) < self.interval:
            self._skipped[reason] = self._skipped.get(reason, 0) + 1
            return None
        self._last[reason] = now
        return self._skipped.pop(reason, 0)


def _answer(status: int, message: str | None = None) -> Response[bytes]:
    body = _OK if message is None else msgspec.json.encode({"error": message})
    return Response(body, status_code=status, media_type="application/json")


def authenticate(systems: Sequence[SystemConfig], token: str | None) -> SystemConfig | None:
    """The configured system this token belongs to, or None.

    Every configured token is compared (in constant time) whatever the body claims,
    so an unknown system and a wrong token take the same time and get the same 401.
    """
    if not token:
        return None
    found = None
    for system in systems:
        if system.signing_token.matches(token) and found is None:
            found = system
    return found


_NOBODY = Secret("\0" * 64)  # compared for a name that is no system, so it costs what a real one does


def authenticate_named(systems: Sequence[SystemConfig], name: str, token: str | None) -> SystemConfig | None:
    """The system of this name if the token is its own: one comparison, however many systems."""
    system = next((s for s in systems if s.name == name), None)
    matched = (system.signing_token if system else _NOBODY).matches(token or "")
    return system if system is not None and matched else None


class Answer(msgspec.Struct):
    """What the dispatch route answers: {"status": "ok"} or {"error": why}."""

    status: str | None = None
    error: str | None = None


_REFUSALS = {
    400: "not a dispatch body, a field not of PluralKit's shape, or `data` that does not fit its type",
    401: "missing, wrong or unknown signing_token, or a system_id that is not the token's system",
    413: "body larger than server.max_body_bytes",
    503: "neither the queue nor the spool could take the event (the error says whether Redis may have it)",
}


def dispatch_handlers(path: str) -> list[HTTPRouteHandler]:
    """`POST {path}` (any system's token) and `POST {path}/{name}` (that system's only)."""
    refusals = Throttle()

    def _warn_refused(reason: str, system_id: str | None) -> None:
        """A WARNING for a 401, with what to do about it; never the token itself."""
        skipped = refusals.allow(reason)
        if skipped is None:
            return
        more = f" ({skipped} more refused since the last such line)" if skipped else ""
        if reason == "no token":
            log.warning("dispatch refused (401): the body carries no signing_token%s", more)
        elif reason == "unknown token":
            log.warning("dispatch refused (401): its signing_token matches no configured system (system_id %s)%s. "
                        "If you just ran `pk;system webhook`, put the token the bot showed into that system's "
                        "signing_token (\"file:PATH\" can be added while pkrelay runs); pkrelay reloads it within "
                        "a second", system_id, more)
        else:
            log.warning("dispatch refused (401): %s (system_id %s)%s. If that is your system's real UUID, set "
                        "system_id in its [[systems]] table", reason, system_id, more)

    async def receive(request: Request[Any, Any, Any], name: str | None) -> Response[bytes]:
        relay: Relay = request.app.state.relay
        settings = relay.live.current
        body = await read_body(request, settings.server.max_body_bytes)
        if body is None:
            EVENTS_RECEIVED.labels("-", "too_large").inc()
            return _answer(413, "body larger than server.max_body_bytes")
        try:
            dispatch = _decode(body)
        except _UNDECODABLE as exc:
            EVENTS_RECEIVED.labels("-", "invalid").inc()
            return _answer(400, f"not a dispatch body: {exc}")
        if problem := malformed(dispatch):
            EVENTS_RECEIVED.labels("-", "invalid").inc()
            return _answer(400, problem)
        token = dispatch.signing_token
        system = (authenticate(settings.systems, token) if name is None
                  else authenticate_named(settings.systems, name, token))
        if system is None:
            EVENTS_RECEIVED.labels("PING" if dispatch.type == "PING" else "-", "unauthorized").inc()
            _warn_refused("no token" if not token else "unknown token", dispatch.system_id)
            return _answer(401, "unauthorized")
        learned = await relay.pins.refresh()
        refused = pins.refusal(system, dispatch.system_id, settings.systems, learned)
        if refused is None and dispatch.system_id and pins.pinned(system, learned) is None:
            refused = await relay.pins.pin_first(system.name, dispatch.system_id)
        if refused is not None:
            EVENTS_RECEIVED.labels("-", "unauthorized").inc()
            _warn_refused(refused, dispatch.system_id)
            return _answer(401, "unauthorized")
        if dispatch.type == "PING":  # verified: the dashboard's "connect a system" page shows it
            await pings.record(relay.redis, dispatch.system_id, system)
            EVENTS_RECEIVED.labels("PING", "ping").inc()
            return _answer(200)
        try:
            decode_data(dispatch.type, dispatch.data)
        except _UNDECODABLE as exc:
            EVENTS_RECEIVED.labels(dispatch.type, "invalid").inc()
            return _answer(400, f"data does not match {dispatch.type}: {exc}")
        received_ms = time.time_ns() // 1_000_000
        event_id = new_event_id(received_ms)
        payload = queue.encode(queue.QueuedDispatch(
            event_id=event_id,
            received_ms=received_ms,
            system=system.name,
            type=dispatch.type,
            system_id=dispatch.system_id or pins.pinned(system, relay.pins.current),
            entity_id=dispatch.id,
            data=bytes(dispatch.data) or b"null",
        ))
        outcome = await relay.store(event_id, system.name, payload)
        EVENTS_RECEIVED.labels(dispatch.type, outcome).inc()
        if outcome == "unavailable":
            return _answer(503, "the event could not be stored; nothing was kept")
        if outcome == "unconfirmed":
            return _answer(503, "the event could not be confirmed stored: Redis did not answer in time and the "
                                "spool cannot be written; it may still be delivered, once")
        return _answer(200)

    description = ("200 once the event is durable (queued or spooled); 401 wrong token or a system_id that is not "
                   "the token's system; 400 bad body; 413 too large; 503 when neither the queue nor the spool can "
                   "take it.")
    responses = {code: ResponseSpec(Answer, description=why) for code, why in _REFUSALS.items()}

    @post(path, status_code=200, summary="Receive a PluralKit dispatch webhook (any configured system)",
          description=description, responses=responses)
    async def receive_dispatch(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await receive(request, None)

    @post(f"{path.rstrip('/')}/{{name:str}}", status_code=200, description=description, responses=responses,
          summary="Receive a PluralKit dispatch webhook for one system (only its signing_token is compared)")
    async def receive_system_dispatch(request: Request[Any, Any, Any],
                                      name: Annotated[str, PathParameter()]) -> Response[bytes]:
        return await receive(request, name)

    return [receive_dispatch, receive_system_dispatch]
