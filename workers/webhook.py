"""Webhook sinks: Standard Webhooks signing and one POST per attempt.

Sinks are posted to with aiohttp, not httpx (which pkrelay uses for PluralKit's
API, where requests are few and rate-limited): on a burst every event is a POST, and
measured on our machines an aiohttp POST costs the worker about a tenth of the CPU
of an httpx one (0.17 ms against 1.9 ms), which was a third of a worker's work.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import time
from datetime import UTC, datetime

import aiohttp

from pkrelay import shaping
from pkrelay.config import WebhookSink
from workers.proxy import Proxies
from workers.sinks import DeliveryFailed, Outgoing

TIMEOUT = aiohttp.ClientTimeout(total=10.0, connect=5.0)
# Read this much of an answer, so the connection can be kept; nothing reads it.
ANSWER_BYTES = 64 * 1024


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the base64 part of whsec_..."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, body: bytes, now: int | None = None,
            content_type: str = "application/json") -> dict[str, str]:
    timestamp = int(time.time()) if now is None else now
    out = {"content-type": content_type, "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
           "user-agent": "pkrelay"}
    if secret:
        out["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return out


def retry_after(value: str | None) -> float | None:
    """A Retry-After header's wait in seconds: delta-seconds or an HTTP date (RFC 9110);
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def session() -> aiohttp.ClientSession:
    """The one HTTP session of a worker's webhook sinks. Redirects are not followed
    (`send`); HTTP(S)_PROXY and NO_PROXY are read once per process (workers/proxy.py),
    not by aiohttp on every request."""
    return aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False)


class WebhookSender:
    def __init__(self, sink: WebhookSink, http: aiohttp.ClientSession, proxies: Proxies) -> None:
        self.sink = sink
        self.http = http
        self.route = proxies.route(sink.url)

    async def send(self, outgoing: Outgoing) -> int:
        """POST once (the envelope, or what the sink's template makes of it); any 2xx is
        success. The sink's `headers` come first: they cannot replace the signature's."""
        sink = self.sink
        try:
            body = shaping.render(sink.template, outgoing.envelope) if sink.template else outgoing.body
        except shaping.RenderError as exc:
            raise DeliveryFailed(str(exc)) from None
        sent = {name.lower(): value.reveal() for name, value in sink.headers.items()}
        sent |= headers(sink.secret.reveal(), outgoing.event.id, body, content_type=sink.content_type)
        try:
            async with self.http.post(sink.url, data=body, allow_redirects=False, proxy=self.route.proxy,
                                      proxy_headers=self.route.proxy_headers,
                                      headers=sent | self.route.headers) as response:
                await response.content.read(ANSWER_BYTES)
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"HTTP {status}", status,
                                 retry_after(response.headers.get("retry-after")) if status in (429, 503) else None)
        return status
