"""Group commit of the receiver's enqueues (see `Batcher`)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from pkrelay import queue


class Batcher:
    """Group commit: jobs enqueued while a round trip is in flight share the next one.

    Under load the receiver's cost is the Redis round trip, not the request; letting
    concurrent requests share one call keeps each answer one round trip away
    while the server does a fraction of the work. Nothing waits for a timer.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[tuple[tuple[str, str, bytes], asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def enqueue(self, event_id: str, system: str, payload: bytes) -> None:
        """Return once the job is in Redis; raise what the round trip raised."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((event_id, system, payload), future))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                error: Exception | None = None
                try:
                    await queue.enqueue(self.redis, [item for item, _ in batch])
                except Exception as exc:  # every waiter learns of the failure
                    error = exc
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error) if error else future.set_result(None)
        finally:
            self._flushing = None
