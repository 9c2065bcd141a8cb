"""The receiver's long-lived parts: Redis, the spool, the database, the live config."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Literal

import sqlalchemy as sa
from litestar import Litestar
from redis.exceptions import RedisError, ResponseError

from pkrelay import db, logs, queue
from pkrelay.config import LiveSettings, Settings
from pkrelay.pins import Pins
from receiver.batcher import Batcher
from receiver.spool import Spool

log = logging.getLogger("pkrelay.receiver")
Outcome = Literal["queued", "spooled", "unavailable", "unconfirmed"]


def may_have_run(exc: Exception) -> bool:
    """Whether Redis may still run an enqueue that raised `exc`.

    Yes when the request may have left (a reply that did not come in time, a connection
    lost mid-way: a paused server runs it when it resumes); no when Redis refused it
    (an error reply) or no connection was made at all (redis-py says "connecting").
    redis-py 5.3 raises the same types (ConnectionError, TimeoutError) for a failed
    connect and a lost request, so only the text tells them apart: its minor is pinned
    and tests/test_internals.py checks the text.
    """
    if isinstance(exc, ResponseError):
        return False
    return "connecting" not in str(exc)


class Relay:
    def __init__(self, live: LiveSettings, redis_url: str) -> None:
        settings = live.current
        self.live = live
        self.redis = queue.connect(redis_url)
        self.batcher = Batcher(self.redis)
        self.pins = Pins(self.redis)
        # Reads (API, dashboard, /api/stream, /readyz) take no write lock; writes
        # (the dashboard's actions, through engine.begin()) still BEGIN IMMEDIATE.
        self.engine = db.create_engine(settings.database_url, deferred_reads=True)
        self.spool = Spool(settings.data_path / "spool")

    async def store(self, event_id: str, system: str, payload: bytes) -> Outcome:
        """Queue the event, or spool it when Redis cannot take it.

        An enqueue whose outcome is unknown is spooled too, under the same event id:
        if Redis ran it after all, the second copy is the same arq job and the
        workers' insert-or-ignore on the event id keeps one event. "unavailable" means
        nothing was kept; "unconfirmed" that Redis may still have it.
        """
        maybe_queued = False
        if not self.spool.pending:
            try:
                await self.batcher.enqueue(event_id, system, payload)
                return "queued"
            except (RedisError, OSError) as exc:
                maybe_queued = may_have_run(exc)
                log.warning("queue unavailable, spooling %s: %s", event_id, exc)
        try:
            self.spool.write(event_id, payload)
            return "spooled"
        except OSError as exc:
            log.error("spool unavailable, refusing %s: %s", event_id, exc)
            return "unconfirmed" if maybe_queued else "unavailable"

    async def readiness(self) -> dict[str, str]:
        """"ok" or the error, per dependency; the spool fails when it holds events
        that are not moving although Redis answers."""
        status: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.redis.ping(), 2)
            status["redis"] = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            status["redis"] = f"unavailable: {type(exc).__name__}"
        try:
            async with asyncio.timeout(2):
                async with self.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            status["database"] = "ok"
        except Exception as exc:  # any driver error means "not ready"
            status["database"] = f"unavailable: {type(exc).__name__}"
        stalled = self.spool.stalled() if status["redis"] == "ok" else None
        status["spool"] = stalled or "ok"
        return status

    def _config_changed(self, fresh: Settings) -> None:
        logs.setup(fresh.secrets(), "receiver")

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(self.spool.run_drainer(self.redis)),
            asyncio.create_task(self.live.watch(self._config_changed)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.redis.aclose()
            await self.engine.dispose()
