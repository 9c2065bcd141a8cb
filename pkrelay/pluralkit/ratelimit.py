"""A rate limiter shared by every process that uses one token, held in Redis.

PluralKit limits each token (or IP) per scope with GCRA, burst = rate, over 1 s, and
rounds the remaining budget down, so the last request of a full burst is refused.
We keep a sliding log per (scope, key) in Redis and admit at most `rate` requests in
any window of 1 s plus a jitter margin, spaced evenly across it: never a burst (so never
the refused last request of one), never more than the rate in any second the server
counts even when the network delays one request by up to the margin, across processes
and restarts, at rate / (1 + margin) of the allowed rate.
The clock is Redis's own, so processes on machines with skewed clocks agree.

`pluralkit.max_rate` adds a second log of the same kind, shared by every token: a
request is admitted only when both its token's log and the overall one have room
(PluralKit also limits requests per address, which a thousand tokens would not).

A 429 (or a response saying no budget remains) sets a pause that every process
honours before asking again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from redis.asyncio import Redis

from pkrelay import keys
from pkrelay.pluralkit.errors import RateLimitWaitExceeded

WINDOW_MS = 1050  # one second plus the jitter margin

# KEYS: pairs of (log, pause flag); ARGV: member, then (window ms, limit) per pair.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
for i = 1, #KEYS, 2 do
  local pause = redis.call('PTTL', KEYS[i + 1])
  if pause > 0 then return pause end
  local window, limit = tonumber(ARGV[i + 1]) * 1000, tonumber(ARGV[i + 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local newest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')[2]
  if newest then wait = math.max(wait, tonumber(newest) + window / limit - now) end
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = tonumber(redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2])
    wait = math.max(wait, oldest + window - now)
  end
end
if wait > 0 then return math.max(1, math.ceil(wait / 1000)) end
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[i + 1]) + 1000)
end
return 0
"""
# The key of the log every token shares (`pluralkit.max_rate`).
OVERALL = "all"


def window(rate: float) -> tuple[int, int]:
    """(window ms, requests per window) for `rate` per second: whole requests per window,
    and under 1/s one request per a longer window."""
    limit = max(1, int(rate))
    return round(WINDOW_MS * limit / rate), limit


def token_key(token: str) -> str:
    """Redis keys name a token by a hash, never by the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else "anon"


class Limiter:
    """One token's budget in one scope (pkrelay only reads: PluralKit's GET scope)."""

    def __init__(self, redis: Redis, rate: float, token_hash: str, scope: str = "get", overall: float = 0) -> None:
        """`overall`: a cap on every token's requests together (0: none)."""
        self.redis = redis
        self.rate = float(rate)
        self.scope = scope
        self._keys = list(keys.rate_limit(scope, token_hash))
        self._args: list[object] = list(window(self.rate))
        if overall > 0:
            self._keys += keys.rate_limit(scope, OVERALL)
            self._args += window(overall)
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, max_wait: float) -> float:
        """Wait for a slot; returns the seconds waited. Raises RateLimitWaitExceeded when
        the wait would pass `max_wait`, so an arq job is deferred instead of blocking."""
        waited = 0.0
        while True:
            member = f"{time.time_ns()}:{id(self)}:{waited}"
            wait_ms = int(await self._acquire(keys=self._keys, args=[member, *self._args]))
            if wait_ms == 0:
                return waited
            if waited + wait_ms / 1000 > max_wait:
                raise RateLimitWaitExceeded(wait_ms / 1000)
            await asyncio.sleep(wait_ms / 1000)
            waited += wait_ms / 1000

    async def pause(self, seconds: float) -> None:
        """Nobody sharing this key asks again for `seconds` (at least one interval)."""
        ms = max(int(seconds * 1000), int(1000 / self.rate), 1)
        pause_key = self._keys[1]
        current = await self.redis.pttl(pause_key)
        if current < ms:
            await self.redis.set(pause_key, b"1", px=ms)
