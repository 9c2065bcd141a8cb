"""The local spool: where an event goes when Redis cannot take it.

PluralKit never retries, so answering 503 loses the event. Each spooled event is one
file (written, fsynced, then renamed into place, and the directory fsynced), named by
its event id so a listing replays them in arrival order. The drainer moves them into
the queue when Redis answers again; a crash between enqueue and unlink enqueues an
event twice under the same id, which the workers absorb.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from pkrelay import queue

log = logging.getLogger("pkrelay.spool")
SUFFIX = ".event"


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # While anything is spooled, new events go to the spool too, so the queue
        # sees them in arrival order.
        self.pending = bool(self.files())

    def files(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*" + SUFFIX))
        except OSError:
            return []

    def write(self, event_id: str, payload: bytes) -> None:
        """Durably store one event; raises OSError when the disk cannot take it."""
        final = self.directory / (event_id + SUFFIX)
        tmp = self.directory / (event_id + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.pending = True

    async def drain(self, redis: Redis, batch: int = 500) -> int:
        """Move spooled events into the queue; returns how many moved."""
        moved = 0
        while True:
            files = self.files()[:batch]
            if not files:
                self.pending = False
                return moved
            items = []
            for f in files:
                payload = f.read_bytes()
                items.append((f.name.removesuffix(SUFFIX), queue.decode(payload).system, payload))
            await queue.enqueue(redis, items)
            for f in files:
                f.unlink(missing_ok=True)
            moved += len(files)

    async def run_drainer(self, redis: Redis, interval: float = 0.5) -> None:
        # Writes happen on the event loop too (fsync of a small file is a millisecond
        # or two, and only while Redis is down), so `pending` never races a write.
        while True:
            if self.pending:
                try:
                    moved = await self.drain(redis)
                except (RedisError, OSError) as exc:
                    log.debug("spool not drained yet: %s", exc)
                else:
                    if moved:
                        log.info("moved %d spooled events into the queue", moved)
            await asyncio.sleep(interval)
