"""Webhook sinks: Standard Webhooks signing and one POST per attempt."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import httpx

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


async def post(client: httpx.AsyncClient, url: str, secret: str, msg_id: str, body: bytes) -> int:
    """POST once; the status code, or httpx.HTTPError for a transport failure."""
    response = await client.post(url, content=body, headers=headers(secret, msg_id, body), timeout=TIMEOUT)
    return response.status_code
