"""The PluralKit API v2 client: rate-aware, typed at the boundary, honest about failure.

Layers, outermost first: the typed methods (one per endpoint pkrelay reads, answers
decoded once into pkrelay.pluralkit.models), `_get` (limiter, retries, error
mapping), and the httpx transport, which tests replace with a real fake server
rather than a mock. pkrelay only reads, so only the GET budget is spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

# httpx imports anyio's event-loop backend on its first request (about 60 ms), which
# would make the first request after a limiter slot arrive late and crowd the next one.
import anyio._backends._asyncio  # noqa: F401
import httpx
import msgspec
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from pkrelay.pluralkit import errors, models
from pkrelay.pluralkit.ratelimit import Limiter, token_key
from pkrelay.retry import Backoff

if TYPE_CHECKING:
    from pkrelay.config import PluralKitConfig

log = logging.getLogger("pkrelay.api")
T = TypeVar("T")

RETRY = Backoff(base=0.25, cap=5.0)

API_REQUESTS = Counter("pkrelay_api_requests_total", "PluralKit API requests by scope and status",
                       ["scope", "status"])
RATE_LIMIT_WAIT = Histogram("pkrelay_rate_limit_wait_seconds", "Time spent waiting for the shared limiter",
                            ["scope"], buckets=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
RATE_LIMITED = Counter("pkrelay_api_429_total", "429 answers seen from PluralKit", ["scope"])

_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.BadRequest, 401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
}
_error_body = msgspec.json.Decoder(models.ErrorBody)


def _segment(ref: str) -> str:
    """One path segment, whatever `ref` holds: an id never adds a segment, a query or a
    dot segment to the path (`../systems/x` is sent as one escaped segment)."""
    return quote(ref, safe="@").replace(".", "%2E")


def shared_http(base_url: str, user_agent: str, timeout: float = 10.0,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """One connection pool to the API, for the clients of any number of tokens (each
    sends its own with every request): a process polling a thousand systems keeps a
    few sockets and one TLS context, not one of each per system."""
    if not user_agent:
        raise ValueError("PluralKit answers 400 without a User-Agent; pluralkit.user_agent is empty")
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), headers={"User-Agent": user_agent}, timeout=timeout,
                             transport=transport, follow_redirects=False)


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
        rate: float = 10,
        max_wait: float = 10.0,
        timeout: float = 10.0,
        retries: int = 3,
        max_rate: float = 0,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not user_agent:
            raise ValueError("PluralKit answers 400 without a User-Agent; pluralkit.user_agent is empty")
        self.limiter = Limiter(redis, rate, token_key(token), overall=max_rate)
        self.max_wait = max_wait
        self.retries = retries
        # The token goes with each request, so clients of many tokens can share one pool.
        self._headers = {"Authorization": token} if token else {}  # raw, no "Bearer"
        self._owns_http = http is None
        self.http = http or shared_http(base_url, user_agent, timeout, transport)

    @classmethod
    def from_settings(cls, pk: PluralKitConfig, redis: Redis, token: str,
                      transport: httpx.AsyncBaseTransport | None = None,
                      http: httpx.AsyncClient | None = None) -> PluralKitClient:
        """The client every part of pkrelay uses: the configured API, agent and rates;
        on `http` (from `shared_http`) when given, else on a pool of its own."""
        return cls(base_url=pk.api_base_url, user_agent=pk.user_agent, redis=redis, token=token, rate=pk.get_rate,
                   max_rate=pk.max_rate, transport=transport, http=http)

    async def aclose(self) -> None:
        """Close the connection pool, if it is this client's own."""
        if self._owns_http:
            await self.http.aclose()

    async def _request(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """One GET through the shared limiter, retried on 5xx, timeouts and connection
        errors, and after a 429 (the server did not act on it)."""
        scope = self.limiter.scope
        attempt = 0
        started = time.monotonic()
        while True:
            waited = await self.limiter.acquire(self.max_wait - (time.monotonic() - started))
            RATE_LIMIT_WAIT.labels(scope).observe(waited)
            try:
                response = await self.http.get(path, params=params, headers=self._headers)
            except httpx.TransportError as exc:
                API_REQUESTS.labels(scope, "error").inc()
                if attempt >= self.retries:
                    raise errors.TransportError(f"GET {path}: {type(exc).__name__}") from None
                attempt += 1
                await asyncio.sleep(RETRY.delay(attempt))
                continue
            API_REQUESTS.labels(scope, str(response.status_code)).inc()
            await self._observe_headers(response)
            if response.status_code == 429:
                RATE_LIMITED.labels(scope).inc()
                # A refused request still spends budget: wait retry_after plus one interval.
                retry_after = (self._error_body(response).retry_after or 0) / 1000
                await self.limiter.pause(retry_after + 1 / self.limiter.rate)
                continue
            if response.status_code >= 500 and attempt < self.retries:
                attempt += 1
                await asyncio.sleep(RETRY.delay(attempt))
                continue
            if response.status_code == 401:
                log.warning("PluralKit refused the API token on GET %s (401): it is wrong or was revoked", path)
            if response.status_code >= 400:
                raise self._error(path, response)
            return response

    async def _observe_headers(self, response: httpx.Response) -> None:
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
            await self.limiter.pause(min(wait, 5.0))

    @staticmethod
    def _error_body(response: httpx.Response) -> models.ErrorBody:
        try:
            return _error_body.decode(response.content)
        except msgspec.DecodeError:
            return models.ErrorBody(message=response.reason_phrase or "")

    @classmethod
    def _error(cls, path: str, response: httpx.Response) -> errors.ApiError:
        body = cls._error_body(response)
        where = f"GET {path}"
        status = response.status_code
        if status == 400:
            return errors.BadRequest(status, body.code, body.message, where, body.errors)
        if status >= 500:
            return errors.ServerError(status, body.code, body.message, where)
        return _ERRORS.get(status, errors.ApiError)(status, body.code, body.message, where)

    async def _get(self, path: str, model: type[T], params: dict[str, Any] | None = None) -> T:
        response = await self._request(path, params)
        return msgspec.json.decode(response.content, type=model)

    async def system(self, ref: str = "@me") -> models.System:
        return await self._get(f"/systems/{_segment(ref)}", models.System)

    async def settings(self, ref: str = "@me") -> models.SystemSettings:
        return await self._get(f"/systems/{_segment(ref)}/settings", models.SystemSettings)

    async def members(self, ref: str = "@me") -> list[models.Member]:
        return await self._get(f"/systems/{_segment(ref)}/members", list[models.Member])

    async def groups(self, ref: str = "@me", *, with_members: bool = False) -> list[models.Group]:
        params = {"with_members": "true"} if with_members else None
        return await self._get(f"/systems/{_segment(ref)}/groups", list[models.Group], params)

    async def fronters(self, ref: str = "@me") -> models.Fronters | None:
        """The current switch with full members; None if the system never switched (204)."""
        response = await self._request(f"/systems/{_segment(ref)}/fronters")
        if response.status_code == 204 or not response.content:
            return None
        return msgspec.json.decode(response.content, type=models.Fronters)

    async def switches(self, ref: str = "@me", *, before: str | None = None, limit: int = 100) -> list[models.Switch]:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        return await self._get(f"/systems/{_segment(ref)}/switches", list[models.Switch], params)

    async def switch(self, ref: str, switch_id: str) -> models.Fronters:
        """One switch with full member objects."""
        return await self._get(f"/systems/{_segment(ref)}/switches/{_segment(switch_id)}", models.Fronters)

    async def member(self, ref: str) -> models.Member:
        return await self._get(f"/members/{_segment(ref)}", models.Member)

    async def group(self, ref: str) -> models.Group:
        return await self._get(f"/groups/{_segment(ref)}", models.Group)
