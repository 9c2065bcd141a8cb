"""Webhook sinks: Standard Webhooks signing and one POST per attempt."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import httpx

from pkrelay.config import WebhookSink
from workers.sinks import DeliveryFailed, Outgoing

TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the base64 part of whsec_..."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, body: bytes, now: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if now is None else now
    out = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
           "user-agent": "pkrelay"}
    if secret:
        out["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return out


class WebhookSender:
    def __init__(self, sink: WebhookSink, http: httpx.AsyncClient) -> None:
        self.sink = sink
        self.http = http

    async def send(self, outgoing: Outgoing) -> int:
        """POST once; any 2xx is success."""
        body = outgoing.body
        try:
            response = await self.http.post(self.sink.url, content=body, timeout=TIMEOUT,
                                            headers=headers(self.sink.secret.reveal(), outgoing.event.id, body))
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"HTTP {response.status_code}", response.status_code)
        return response.status_code
