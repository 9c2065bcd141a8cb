"""The verified registration PINGs the receiver answered, for the "connect a system" page.

PluralKit checks a new webhook URL with two PINGs: one with the signing token (must
get 200) and one with a random token (must get 401). Only the first kind is recorded
(in Redis, so that every receiver replica's show, kept an hour): anyone can send
wrong-token PINGs, and listing them would let a stranger fill the page and hide the
owner's real registration. Those are counted in /metrics instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from pkrelay import keys
from pkrelay.config import SystemConfig

log = logging.getLogger("pkrelay.receiver")
KEEP = 50
TTL_S = 3600


class Ping(msgspec.Struct):
    at: float
    system_id: str | None  # as the body named it
    system: str | None  # the configured system whose token matched
    status: int  # 200: entries of earlier releases may say 401


async def record(redis: Redis, system_id: str | None, system: SystemConfig) -> None:
    """Note one verified PING of `system`; never fails the answer itself."""
    entry = msgspec.json.encode(Ping(time.time(), system_id, system.name, 200))
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.PINGS, entry)
            pipe.ltrim(keys.PINGS, 0, KEEP - 1)
            pipe.expire(keys.PINGS, TTL_S)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.debug("PING not recorded for the dashboard: %s", exc)


async def recent(redis: Redis) -> list[Ping]:
    """Newest first; empty when Redis cannot answer."""
    try:
        raw: list[Any] = await redis.lrange(keys.PINGS, 0, KEEP - 1)
    except (RedisError, OSError):
        return []
    return [msgspec.json.decode(r, type=Ping) for r in raw]
