"""The lock that serialises everything that writes one system's log and state (ingest
of its dispatches, the diff of its polls), so `previous` always chains.

It is a short lease kept alive by a background task for as long as it is held: a dead
holder blocks its system for `Lease.seconds` at most, however long a live one works (a
batch waiting on the API's rate limit). A holder that cannot renew (Redis gone, the
process stalled, the key taken) has the task that acquired the lock cancelled before
the lease can lapse, so it writes nothing after another worker may have taken over.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError, RedisError

from pkrelay import keys

log = logging.getLogger("pkrelay.worker")


@dataclass(frozen=True)
class Lease:
    """How long a lock lasts unrenewed, how often its holder renews it, and how long
    before it would lapse the holder gives up (so two holders never write at once)."""

    seconds: float = 10.0
    renew_every_s: float = 1.0
    margin_s: float = 3.0

    @property
    def give_up_after_s(self) -> float:
        return self.seconds - self.margin_s


LEASE = Lease()


class SystemLock:
    """One system's lease; `acquire` in the task that does the system's work."""

    def __init__(self, redis: Redis, system: str, lease: Lease = LEASE) -> None:
        self.name = keys.system_lock_name(system)
        self.lease = lease
        self._lock: Lock = redis.lock(self.name, timeout=lease.seconds, sleep=0.01)
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
            await asyncio.sleep(self.lease.renew_every_s)
            if holder.done():  # it ended without releasing: let the lease lapse
                return
            sent = loop.time()
            try:
                # A renewal that has not answered by the deadline counts as failed,
                # however long the client would go on retrying it.
                async with asyncio.timeout(max(0.0, renewed + self.lease.give_up_after_s - sent)):
                    await self.reacquire()
                renewed = sent
                continue
            except LockNotOwnedError:
                reason = "it lapsed and may be held elsewhere"
            except (RedisError, TimeoutError) as exc:  # a Redis restart: try again while the lease lasts
                if loop.time() - renewed < self.lease.give_up_after_s:
                    continue
                reason = f"Redis did not answer for {loop.time() - renewed:.0f} s ({type(exc).__name__})"
            log.warning("lost the lock of %s (%s): stopping its work", self.name, reason)
            holder.cancel()
            return
