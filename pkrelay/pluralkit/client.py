"""The PluralKit API v2 client: rate-aware, typed at the boundary, honest about failure.

Layers, outermost first: the typed methods (one per endpoint, answers decoded once
into pkrelay.pluralkit.models), `_request` (limiter, retries, error mapping), and the
httpx transport, which tests replace with a real fake server rather than a mock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, TypeVar

# httpx imports anyio's event-loop backend on its first request (about 60 ms), which
# would make the first request after a limiter slot arrive late and crowd the next one.
import anyio._backends._asyncio  # noqa: F401
import httpx
import msgspec
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from pkrelay.pluralkit import errors, models
from pkrelay.pluralkit.ratelimit import Limiter, Rates, token_key

log = logging.getLogger("pkrelay.api")
T = TypeVar("T")

API_REQUESTS = Counter("pkrelay_api_requests_total", "PluralKit API requests by scope and status",
                       ["scope", "status"])
RATE_LIMIT_WAIT = Histogram("pkrelay_rate_limit_wait_seconds", "Time spent waiting for the shared limiter",
                            ["scope"], buckets=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
RATE_LIMITED = Counter("pkrelay_api_429_total", "429 answers seen from PluralKit", ["scope"])

_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.BadRequest, 401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
}
_error_body = msgspec.json.Decoder(models.ErrorBody)


def reset_seconds(value: str) -> float:
    """X-RateLimit-Reset: documented as UNIX milliseconds, sent as seconds. Accept both."""
    reset = float(value)
    return reset if reset < 1e11 else reset / 1000


class PluralKitClient:
    def __init__(
        self,
        *,
        base_url: str,
        user_agent: str,
        redis: Redis,
        token: str = "",
        rates: Rates | None = None,
        max_wait: float = 10.0,
        timeout: float = 10.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not user_agent:
            raise ValueError("PluralKit answers 400 without a User-Agent; pluralkit.user_agent is empty")
        headers = {"User-Agent": user_agent}
        if token:
            headers["Authorization"] = token  # raw, no "Bearer"
        self.authenticated = bool(token)
        self.limiter = Limiter(redis, rates or Rates(), token_key(token))
        self.max_wait = max_wait
        self.retries = retries
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                      transport=transport, follow_redirects=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, *, scope: str, params: dict[str, Any] | None = None,
                       body: Any = None) -> httpx.Response:
        """One call with the shared limiter; GETs are retried on 5xx, timeouts and
        connection errors, any call after a 429 (the server did not act on it)."""
        attempt = 0
        started = time.monotonic()
        while True:
            waited = await self.limiter.acquire(scope, self.max_wait - (time.monotonic() - started))
            RATE_LIMIT_WAIT.labels(scope).observe(waited)
            content = msgspec.json.encode(body) if body is not None else None
            try:
                response = await self.http.request(method, path, params=params, content=content,
                                                   headers={"Content-Type": "application/json"} if content else None)
            except httpx.TransportError as exc:
                API_REQUESTS.labels(scope, "error").inc()
                if method != "GET" or attempt >= self.retries:
                    raise errors.TransportError(f"{method} {path}: {type(exc).__name__}") from None
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                continue
            API_REQUESTS.labels(scope, str(response.status_code)).inc()
            await self._observe_headers(scope, response)
            if response.status_code == 429:
                RATE_LIMITED.labels(scope).inc()
                retry_after = self._error(method, path, response)
                assert isinstance(retry_after, errors.RateLimited)
                # A refused request still spends budget: wait retry_after plus one interval.
                await self.limiter.pause(scope, retry_after.retry_after + 1 / self.limiter.rate(scope))
                continue
            if response.status_code >= 500 and method == "GET" and attempt < self.retries:
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                continue
            if response.status_code >= 400:
                raise self._error(method, path, response)
            return response

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(5.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    async def _observe_headers(self, scope: str, response: httpx.Response) -> None:
        """Slow down before the server says no: no budget left means wait for Reset."""
        remaining, reset = response.headers.get("X-RateLimit-Remaining"), response.headers.get("X-RateLimit-Reset")
        if remaining is None or reset is None:
            return
        try:
            if int(remaining) > 0:
                return
            wait = reset_seconds(reset) - time.time()
        except ValueError:
            return
        if wait > 0:
            await self.limiter.pause(scope, min(wait, 5.0))

    @staticmethod
    def _error(method: str, path: str, response: httpx.Response) -> errors.ApiError:
        try:
            body = _error_body.decode(response.content)
        except msgspec.DecodeError:
            body = models.ErrorBody(message=response.reason_phrase or "")
        where = f"{method} {path}"
        status = response.status_code
        if status == 400:
            return errors.BadRequest(status, body.code, body.message, where, body.errors)
        if status == 429:
            return errors.RateLimited(status, body.code, body.message, where, (body.retry_after or 0) / 1000,
                                      body.scope or "")
        if status >= 500:
            return errors.ServerError(status, body.code, body.message, where)
        return _ERRORS.get(status, errors.ApiError)(status, body.code, body.message, where)

    async def _get(self, path: str, model: type[T], *, scope: str = "get", params: dict[str, Any] | None = None) -> T:
        response = await self._request("GET", path, scope=scope, params=params)
        return msgspec.json.decode(response.content, type=model)

    # Reads ----------------------------------------------------------------------

    async def system(self, ref: str = "@me") -> models.System:
        return await self._get(f"/systems/{ref}", models.System)

    async def settings(self, ref: str = "@me") -> models.SystemSettings:
        return await self._get(f"/systems/{ref}/settings", models.SystemSettings)

    async def members(self, ref: str = "@me") -> list[models.Member]:
        return await self._get(f"/systems/{ref}/members", list[models.Member])

    async def groups(self, ref: str = "@me", *, with_members: bool = False) -> list[models.Group]:
        params = {"with_members": "true"} if with_members else None
        return await self._get(f"/systems/{ref}/groups", list[models.Group], params=params)

    async def fronters(self, ref: str = "@me") -> models.Fronters | None:
        """The current switch with full members; None if the system never switched (204)."""
        response = await self._request("GET", f"/systems/{ref}/fronters", scope="get")
        if response.status_code == 204 or not response.content:
            return None
        return msgspec.json.decode(response.content, type=models.Fronters)

    async def switches(self, ref: str = "@me", *, before: str | None = None, limit: int = 100) -> list[models.Switch]:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        return await self._get(f"/systems/{ref}/switches", list[models.Switch], params=params)

    async def switch(self, ref: str, switch_id: str) -> models.Fronters:
        """One switch with full member objects."""
        return await self._get(f"/systems/{ref}/switches/{switch_id}", models.Fronters)

    async def member(self, ref: str) -> models.Member:
        return await self._get(f"/members/{ref}", models.Member)

    async def member_groups(self, ref: str) -> list[models.Group]:
        return await self._get(f"/members/{ref}/groups", list[models.Group])

    async def group(self, ref: str) -> models.Group:
        return await self._get(f"/groups/{ref}", models.Group)

    async def group_members(self, ref: str) -> list[models.Member]:
        return await self._get(f"/groups/{ref}/members", list[models.Member])

    async def system_guild(self, guild_id: str) -> models.SystemGuildSettings:
        return await self._get(f"/systems/@me/guilds/{guild_id}", models.SystemGuildSettings)

    async def member_guild(self, ref: str, guild_id: str) -> models.MemberGuildSettings:
        return await self._get(f"/members/{ref}/guilds/{guild_id}", models.MemberGuildSettings)

    async def autoproxy(self, guild_id: str) -> models.AutoproxySettings:
        return await self._get("/systems/@me/autoproxy", models.AutoproxySettings, params={"guild_id": guild_id})

    async def message(self, message_id: str) -> models.Message:
        # Documented with its own scope, counted as generic_get by current servers:
        # it spends the get budget so we never exceed what the server counts.
        return await self._get(f"/messages/{message_id}", models.Message)

    # Writes (never retried blindly) ---------------------------------------------

    async def _write(self, method: str, path: str, model: type[T] | None, body: Any = None) -> T | None:
        response = await self._request(method, path, scope="update", body=body)
        if model is None or response.status_code == 204:
            return None
        return msgspec.json.decode(response.content, type=model)

    async def patch_system(self, changes: dict[str, Any], ref: str = "@me") -> models.System | None:
        return await self._write("PATCH", f"/systems/{ref}", models.System, changes)

    async def patch_member(self, ref: str, changes: dict[str, Any]) -> models.Member | None:
        return await self._write("PATCH", f"/members/{ref}", models.Member, changes)

    async def patch_group(self, ref: str, changes: dict[str, Any]) -> models.Group | None:
        return await self._write("PATCH", f"/groups/{ref}", models.Group, changes)

    async def create_member(self, member: dict[str, Any]) -> models.Member | None:
        return await self._write("POST", "/members", models.Member, member)

    async def create_switch(self, members: list[str], timestamp: str | None = None,
                            ref: str = "@me") -> models.Fronters | None:
        body: dict[str, Any] = {"members": members}
        if timestamp:
            body["timestamp"] = timestamp
        return await self._write("POST", f"/systems/{ref}/switches", models.Fronters, body)

    async def delete_member(self, ref: str) -> None:
        await self._write("DELETE", f"/members/{ref}", None)

    async def delete_switch(self, switch_id: str, ref: str = "@me") -> None:
        await self._write("DELETE", f"/systems/{ref}/switches/{switch_id}", None)
