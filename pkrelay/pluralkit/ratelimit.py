"""A rate limiter shared by every process that uses one token, held in Redis.

PluralKit limits each token (or IP) per scope with GCRA, burst = rate, over 1 s, and
rounds the remaining budget down, so the last request of a full burst is refused.
We keep a sliding log per (scope, key) in Redis and admit at most `rate` requests in
any window of 1 s plus a jitter margin, spaced evenly across it: never a burst (so never
the refused last request of one), never more than the rate in any second the server
counts even when the network delays one request by up to the margin, across processes
and restarts, at rate / (1 + margin) of the allowed rate.
The clock is Redis's own, so processes on machines with skewed clocks agree.

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

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return pause end
local window, limit = tonumber(ARGV[1]) * 1000, tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local wait = 0
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if newest then wait = tonumber(newest) + window / limit - now end
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
  wait = math.max(wait, oldest + window - now)
end
if wait > 0 then return math.max(1, math.ceil(wait / 1000)) end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
return 0
"""


def token_key(token: str) -> str:
    """Redis keys name a token by a hash, never by the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else "anon"


class Limiter:
    """One token's budget in one scope (pkrelay only reads: PluralKit's GET scope)."""

    def __init__(self, redis: Redis, rate: float, token_hash: str, scope: str = "get") -> None:
        self.redis = redis
        self.rate = float(rate)
        self.scope = scope
        self._keys = list(keys.rate_limit(scope, token_hash))
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, max_wait: float) -> float:
        """Wait for a slot; returns the seconds waited. Raises RateLimitWaitExceeded when
        the wait would pass `max_wait`, so an arq job is deferred instead of blocking."""
        limit = max(1, int(self.rate))
        waited = 0.0
        while True:
            member = f"{time.time_ns()}:{id(self)}:{waited}"
            wait_ms = int(await self._acquire(keys=self._keys, args=[WINDOW_MS, limit, member]))
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
