"""When each poll check of a system is due, and who may poll it.

| check    | poll cadence (s, at poll_budget 1) | auto (reconciliation) |
|----------|------------------------------------|-----------------------|
| fronters | 2                                  | 60                    |
| switch   | 5 (newest 100)                     | 100                   |
| member   | 10                                 | 100                   |
| group    | 10 (with members)                  | 100                   |
| system   | 20                                 | 100 (also checks `webhook_url`) |
| settings | 20                                 | 100                   |

Poll cadences sum to 1 GET/s and scale with `pluralkit.poll_budget`. An `auto`
system whose webhook no longer points here is polled at the poll cadence. A Redis
lease per system keeps one poll at a time whatever the number of workers, and
expires LEASE_S after its last call if its worker dies.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from pkrelay import keys
from pkrelay.config import SystemConfig
from pkrelay.store.state import Kind

POLL_CADENCE = {Kind.FRONTERS: 2.0, Kind.SWITCH: 5.0, Kind.MEMBER: 10.0, Kind.GROUP: 10.0, Kind.SYSTEM: 20.0,
                Kind.SETTINGS: 20.0}
# Every check within the contract's two minutes for recovering a lost dispatch, with
# room for the tick and the work.
AUTO_CADENCE = {Kind.FRONTERS: 60.0, Kind.SWITCH: 100.0, Kind.MEMBER: 100.0, Kind.GROUP: 100.0,
                Kind.SYSTEM: 100.0, Kind.SETTINGS: 100.0}
# A dead poller's lease lapses this long after its last call; each call renews it.
LEASE_S = 15


async def reconcile_soon(redis: Redis, system: str) -> None:
    """A sign of lost events: every check of this system is due at the next tick."""
    await redis.delete(keys.poll(system, "next"))


async def cadence(redis: Redis, system: SystemConfig, budget: float) -> dict[Kind, float] | None:
    """Seconds between checks of each kind, or None when the system is not polled."""
    if system.mode == "webhook":
        return None
    if system.mode == "poll" or await redis.exists(keys.poll(system.name, "unregistered")):
        return {check: seconds / budget for check, seconds in POLL_CADENCE.items()}
    return AUTO_CADENCE


async def take_due(redis: Redis, system: str, plan: dict[Kind, float], now: float) -> list[Kind]:
    """The checks due now, each moved to its next due time."""
    key = keys.poll(system, "next")
    due_at = {k.decode(): float(v) for k, v in (await redis.hgetall(key)).items()}
    # Ticks come once a second, give or take: a check due before the next tick runs now.
    due = [check for check in plan if due_at.get(check, 0) <= now + 0.5]
    if due:
        # Next time from when it was due, not from now: the average interval stays the
        # cadence however the ticks fall, so the budget holds on average.
        await redis.hset(key, mapping={
            c: due_at[c] + plan[c] if now - plan[c] < due_at.get(c, 0) else now + plan[c] for c in due})
    return due


async def due_soon(redis: Redis, system: str, checks: set[Kind], now: float, seconds: float) -> None:
    """These checks run again `seconds` from now, whatever their cadence: their answers
    could not be used (a dispatch moved what they cover while they were fetched)."""
    if checks:
        await redis.hset(keys.poll(system, "next"), mapping={check: now + seconds for check in checks})


def lease(redis: Redis, system: str) -> Lock:
    return redis.lock(keys.poll(system, "lease"), timeout=LEASE_S)


def holder() -> str:
    """A lease token naming its worker (host:pid), for whoever looks at the key."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def release(lock: Lock) -> None:
    try:
        await lock.release()
    except LockError:  # expired: another worker may hold it now, which is fine
        pass


async def count_call(redis: Redis, system: str) -> None:
    """One API call spent polling, counted per minute for the budget shown by status."""
    key = keys.poll_calls(system, int(time.time() // 60))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, 180)
        await pipe.execute()
