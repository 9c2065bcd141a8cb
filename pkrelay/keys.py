"""pkrelay's Redis key space, in one place (as arq's `constants.py` holds arq's).

Every key starts with `pkrelay:` so a Redis shared with other software stays
readable; systems are named by their configured name, tokens only by a hash.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError, RedisError

PREFIX = "pkrelay"

log = logging.getLogger("pkrelay.worker")

# A worker killed while holding a system's lock holds up the system's events this
# long at most. The holder renews it every SYSTEM_LOCK_RENEW_S while it works, and
# stops working (its task is cancelled, its transaction rolled back) once it could
# not renew for SYSTEM_LOCK_S - SYSTEM_LOCK_MARGIN_S: before the lock can lapse, so
# two holders never write at once.
SYSTEM_LOCK_S = 10
SYSTEM_LOCK_RENEW_S = 1.0
SYSTEM_LOCK_MARGIN_S = 3.0

PollKey = Literal["next", "last", "lease", "unregistered", "token_rejected"]


# The registration PINGs the receivers answered, newest first (the dashboard's
# "connect a system" page).
PINGS = f"{PREFIX}:dashboard:pings"


def pending(system: str) -> str:
    """A system's events not yet logged, oldest first (a sorted set of event ids)."""
    return f"{PREFIX}:pending:{system}"


def payloads(system: str) -> str:
    """The payloads of a system's pending events, so any worker can log them in order."""
    return f"{PREFIX}:payloads:{system}"


def system_lock_name(system: str) -> str:
    return f"{PREFIX}:lock:{system}"


class SystemLock:
    """A short lease kept alive by a background task for as long as it is held.

    A dead holder blocks its system for SYSTEM_LOCK_S at most, however long a live one
    works (a batch waiting on the API's rate limit). A holder that cannot renew (Redis
    gone, the process stalled, the key taken) has the task that acquired the lock
    cancelled before the lease can lapse, so it writes nothing after another worker
    may have taken over.
    """

    def __init__(self, redis: Redis, system: str) -> None:
        self.name = system_lock_name(system)
        self._lock: Lock = redis.lock(self.name, timeout=SYSTEM_LOCK_S, sleep=0.01)
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, blocking_timeout: float) -> bool:
        if not await self._lock.acquire(blocking_timeout=blocking_timeout):
            return False
        holder = asyncio.current_task()
        assert holder is not None, "acquired outside a task"
        self._renewer = asyncio.create_task(self._renew(holder))
        return True

    async def reacquire(self) -> None:
        """A fresh lease now; LockNotOwnedError if it is no longer ours."""
        await self._lock.reacquire()

    async def release(self) -> None:
        """LockError if it had lapsed (someone else may hold it now)."""
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        await self._lock.release()

    async def _renew(self, holder: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        renewed = loop.time()  # when the last renewal that worked was sent: the lease counts from then at worst
        while True:
            await asyncio.sleep(SYSTEM_LOCK_RENEW_S)
            if holder.done():  # it ended without releasing: let the lease lapse
                return
            sent = loop.time()
            try:
                # A renewal that has not answered by the deadline counts as failed,
                # however long the client would go on retrying it.
                async with asyncio.timeout(max(0.0, renewed + SYSTEM_LOCK_S - SYSTEM_LOCK_MARGIN_S - sent)):
                    await self.reacquire()
                renewed = sent
                continue
            except LockNotOwnedError:
                reason = "it lapsed and may be held elsewhere"
            except (RedisError, TimeoutError) as exc:  # a Redis restart: try again while the lease lasts
                if loop.time() - renewed < SYSTEM_LOCK_S - SYSTEM_LOCK_MARGIN_S:
                    continue
                reason = f"Redis did not answer for {loop.time() - renewed:.0f} s ({type(exc).__name__})"
            log.warning("lost the lock of %s (%s): stopping its work", self.name, reason)
            holder.cancel()
            return


def system_lock(redis: Redis, system: str) -> SystemLock:
    """The lock that serialises everything that writes a system's log and state
    (ingest of its dispatches, the diff of its polls), so `previous` always chains."""
    return SystemLock(redis, system)


def poll(system: str, what: PollKey) -> str:
    """The poller's bookkeeping of a system: when each check is next due (hash), when
    it last ran, who polls it now (lease), whether its webhook is registered elsewhere,
    whether PluralKit refuses its api_token."""
    return f"{PREFIX}:poll:{what}:{system}"


def poll_calls(system: str, minute: int) -> str:
    """API calls spent polling a system in one minute (UNIX time // 60)."""
    return f"{PREFIX}:poll:calls:{system}:{minute}"


def rate_limit(scope: str, token_hash: str) -> tuple[str, str]:
    """The limiter's sliding log of one (scope, token) and its pause flag."""
    base = f"{PREFIX}:rl:{scope}:{token_hash}"
    return base, base + ":pause"


def mqtt(sink: str, system_id: str, what: Literal["front", "components", "migrated", "debounce"]) -> str:
    """An MQTT sink's memory of a system, shared by its workers: the fronters it last
    published (so a switch event fires once), the discovery components it ever
    announced (so removed ones are cleared), whether the pre-device-discovery config
    was migrated, and the burst of switches it is waiting out."""
    return f"{PREFIX}:mqtt:{sink}:{system_id}:{what}"
