"""The failed-auth limit: at most `failures` wrong admin-token logins or wrong
Bearer tokens per client address in a sliding `window`, then 429 with Retry-After.

One count per address serves the dashboard's login form and every Bearer check
(/api/*, /api/stream, /metrics), so an address cannot spread its guesses over them.
Counts live in Redis (`keys.auth_failures`) so every receiver replica sees them; when
Redis does not answer, this process counts in memory instead of refusing logins.
While an address is blocked even the right token is refused (429), so a guess is
never confirmed; attempts refused that way are not counted, so a slot frees when the
oldest failure leaves the window, as Retry-After says.

The address is the connection's peer as the ASGI server reports it. uvicorn replaces
it by X-Forwarded-For only for peers in FORWARDED_ALLOW_IPS (its setting; default
loopback); behind any other proxy every client shares the proxy's address.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send
from redis.asyncio import Redis
from redis.exceptions import RedisError

from pkrelay import keys

MAX_ADDRESSES = 10_000  # in-memory fallback: the most addresses remembered at once


@dataclass
class FailedAuthLimit:
    """The limit (tests shorten the window) and this process's fallback counts."""

    window: float = 60.0
    failures: int = 10
    _memory: dict[str, list[float]] = field(default_factory=dict, repr=False)

    async def blocked(self, redis: Redis, address: str) -> int | None:
        """None while `address` may try; else the seconds until one of its slots frees."""
        now = time.time()
        try:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(keys.auth_failures(address), "-inf", now - self.window)
                pipe.zrange(keys.auth_failures(address), 0, -1, withscores=True)
                _, entries = await pipe.execute()
            times = sorted(float(score) for _, score in entries)
        except (RedisError, OSError):
            times = self._recent(address, now)
        if len(times) < self.failures:
            return None
        frees_at = times[len(times) - self.failures] + self.window
        return max(1, math.ceil(frees_at - now))

    async def failed(self, redis: Redis, address: str) -> None:
        """Count one failed attempt of `address`."""
        now = time.time()
        key = keys.auth_failures(address)
        try:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                pipe.zadd(key, {f"{now:.6f}:{secrets.token_hex(4)}": now})
                pipe.pexpire(key, int(self.window * 1000) + 1000)
                await pipe.execute()
        except (RedisError, OSError):
            self._recent(address, now).append(now)

    def _recent(self, address: str, now: float) -> list[float]:
        """This process's failures of `address` still in the window (the list itself)."""
        recent = [t for t in self._memory.pop(address, []) if t > now - self.window]
        if len(self._memory) >= MAX_ADDRESSES:  # forget the address not seen for longest
            self._memory.pop(next(iter(self._memory)))
        self._memory[address] = recent
        return recent


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The peer address the limit counts against ("unknown" when the server gives none)."""
    client = connection.scope.get("client")
    return str(client[0]) if client else "unknown"


def _limit(scope: Scope) -> tuple[FailedAuthLimit, Redis]:
    app = scope["litestar_app"]
    return app.state.auth_limit, app.state.relay.redis


class BearerLimit(ASGIMiddleware):
    """The limit around a Bearer-guarded route: 429 while the address is blocked
    (before its guard runs), and each 401 to a request that carried an Authorization
    header counted as a failure. A request without one is no guess: not counted."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        limit, redis = _limit(scope)
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        wait = await limit.blocked(redis, address)
        if wait is not None:
            await _too_many(send, wait)
            return
        headers = dict(scope["headers"])
        if b"authorization" not in headers:
            await next_app(scope, receive, send)
            return
        await next_app(scope, receive, _counting(send, lambda: limit.failed(redis, address)))


def _counting(send: Send, failed: Callable[[], Awaitable[None]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 401:
            await failed()  # before the answer leaves: the client's next try sees the count
        await send(message)

    return wrapped


async def _too_many(send: Send, wait: int) -> None:
    body = msgspec.json.encode({"status_code": 429, "detail": too_many_detail(wait)})
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(wait).encode()), (b"x-content-type-options", b"nosniff"),
    ]}
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def too_many_detail(wait: int) -> str:
    return f"too many failed authentication attempts from this address; try again in {wait} s"
