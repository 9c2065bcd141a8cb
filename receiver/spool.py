"""The local spool: where an event goes when Redis cannot take it.

PluralKit never retries, so answering 503 loses the event. Each spooled event is one
file (written in full, fsynced, then renamed into place, and the directory fsynced),
named by its event id so a listing replays them in arrival order. A write the disk
cannot finish (ENOSPC, EFBIG) raises and leaves nothing behind, so the receiver
answers 503 rather than 200 for half an event. The drainer moves the files into the
queue when Redis answers again; a crash between enqueue and unlink enqueues an event
twice under the same id, which the workers absorb. A file that does not decode (it
cannot come from this code, but disks and people do things) is moved to
`quarantine/`, kept for a human, and the rest drain on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from pkrelay import queue
from pkrelay.retry import Backoff
from receiver.metrics import SPOOL_QUARANTINED

log = logging.getLogger("pkrelay.spool")
SUFFIX = ".event"
TMP_SUFFIX = ".tmp"
QUARANTINE = "quarantine"
# Events waiting this long while Redis answers, with none moved, make /readyz fail.
STALL_AFTER_S = 30.0
DRAINER_BACKOFF = Backoff(base=0.5, cap=30.0)


class Spool:
    def __init__(self, directory: Path, stall_after: float = STALL_AFTER_S) -> None:
        self.directory = directory
        self.stall_after = stall_after
        directory.mkdir(parents=True, exist_ok=True)
        # A .tmp file is a write that never finished, so never answered 200: litter.
        for stale in directory.glob("*" + TMP_SUFFIX):
            stale.unlink(missing_ok=True)
        # While anything is spooled, new events go to the spool too, so the queue
        # sees them in arrival order.
        self.pending = bool(self.files())
        # When the drainer last made progress (moved events, or found none to move).
        self.progress_at = time.monotonic()

    def files(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*" + SUFFIX))
        except OSError:
            return []

    def write(self, event_id: str, payload: bytes) -> None:
        """Durably store one event; raises OSError when the disk cannot take all of it."""
        final = self.directory / (event_id + SUFFIX)
        tmp = self.directory / (event_id + TMP_SUFFIX)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(payload)
                while view:  # os.write may take less than it was given (a disk filling up)
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if not self.pending:
            self.progress_at = time.monotonic()  # the stall clock starts with the first event
        self.pending = True

    def oldest_seconds(self) -> float:
        """How long the oldest spooled event has waited (0 when the spool is empty)."""
        for f in self.files():
            try:
                return max(0.0, time.time() - f.stat().st_mtime)
            except OSError:
                continue  # drained meanwhile
        return 0.0

    def stalled(self) -> str | None:
        """Why the spool is not draining, or None when it is empty or moving."""
        waiting = len(self.files()) if self.pending else 0
        idle = time.monotonic() - self.progress_at
        if not waiting or idle < self.stall_after:
            return None
        return f"not draining: {waiting} events waiting, none moved for {idle:.0f} s"

    def _quarantine(self, path: Path, error: Exception) -> None:
        target = self.directory / QUARANTINE
        target.mkdir(exist_ok=True)
        path.replace(target / path.name)
        SPOOL_QUARANTINED.inc()
        log.error("spooled event %s cannot be decoded (%s); moved to %s and kept, the rest drain on",
                  path.name, error, target)

    async def drain(self, redis: Redis, batch: int = 500) -> int:
        """Move spooled events into the queue; returns how many moved."""
        moved = 0
        while True:
            files = self.files()[:batch]
            if not files:
                self.pending = False
                self.progress_at = time.monotonic()
                return moved
            items, taken = [], []
            for f in files:
                payload = f.read_bytes()
                try:
                    system = queue.decode(payload).system
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self._quarantine(f, exc)
                    continue
                items.append((f.name.removesuffix(SUFFIX), system, payload))
                taken.append(f)
            if items:
                await queue.enqueue(redis, items)
            for f in taken:
                f.unlink(missing_ok=True)
            moved += len(taken)
            self.progress_at = time.monotonic()

    async def _drain_forever(self, redis: Redis, interval: float) -> None:
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

    async def run_drainer(self, redis: Redis, interval: float = 0.5) -> None:
        """Drain for as long as the receiver runs, restarted if it ever fails."""
        await supervise("spool drainer", lambda: self._drain_forever(redis, interval), DRAINER_BACKOFF)


async def supervise(name: str, run: Callable[[], Awaitable[None]], backoff: Backoff) -> None:
    """Run `run()` again (after a backoff) whenever it raises: a background task
    that dies silently leaves the receiver looking healthy while it no longer works."""
    attempt = 0
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except Exception:
            attempt = 1 if time.monotonic() - started > backoff.cap else attempt + 1
            delay = backoff.delay(attempt)
            log.exception("%s failed; restarting it in %.1f s", name, delay)
            await asyncio.sleep(delay)
