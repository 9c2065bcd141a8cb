"""Does a system's API token still work?

PluralKit answers a wrong or revoked token as if none was given: public data only,
private fields null, `privacy` null. Taken at face value that reads as the owner
making everything private (and, once the token is fixed, public again), so polling
would invent events. An answer that lost the owner's view, or a 401, marks the token
rejected instead: nothing from that poll is compared, and until the token works
again only the owner's own system is asked for (`GET /systems/@me`, 401 while bad).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Gauge
from redis.asyncio import Redis

from pkrelay import keys
from pkrelay.store.state import Kind

log = logging.getLogger("pkrelay.poll")

TOKEN_REJECTED = Gauge("pkrelay_api_token_rejected", "1 while PluralKit does not accept the system's api_token",
                       ["system"], multiprocess_mode="mostrecent")


def owner_view_lost(fetched: dict[Kind, Any]) -> bool:
    """True when an answer shows what only anyone, not the owner, would see: the owner
    always gets each object's `privacy` settings, anyone else gets null."""
    objects: list[Any] = [fetched.get(Kind.SYSTEM)]
    objects += fetched.get(Kind.MEMBER) or []
    objects += fetched.get(Kind.GROUP) or []
    objects += (fetched.get(Kind.FRONTERS) or {}).get("members") or []
    return any(isinstance(o, dict) and o.get("privacy") is None for o in objects)


async def is_rejected(redis: Redis, system: str) -> bool:
    return bool(await redis.exists(keys.poll(system, "token_rejected")))


async def mark(redis: Redis, system: str, rejected: bool, why: str = "") -> None:
    """Record the token's state; log once per change."""
    flag = keys.poll(system, "token_rejected")
    TOKEN_REJECTED.labels(system).set(int(rejected))
    if rejected == bool(await redis.exists(flag)):
        return
    if rejected:
        log.warning("system %s: PluralKit does not accept its api_token (%s); polling only checks the token "
                    "until it works again. Set a fresh token from `pk;token`.", system, why)
        await redis.set(flag, b"1")
    else:
        log.warning("system %s: its api_token works again; polling resumes", system)
        await redis.delete(flag)
