"""Helpers to build a pkrelay deployment inside a test: config, app, burst worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from arq import create_pool
from arq.worker import Worker

from pkrelay import config, db
from pkrelay.store.deliveries import RetryPolicy
from receiver.app import create_app
from workers.poll import poll_tick
from workers.settings import worker_settings


@dataclass
class Deployment:
    config_file: Path
    redis_url: str

    def live(self) -> config.LiveSettings:
        return config.LiveSettings(self.config_file, config.load(self.config_file))

    def app(self):  # type: ignore[no-untyped-def]
        return create_app(self.live(), self.redis_url)

    async def migrate(self) -> None:
        await db.migrate_url(self.live().current.database_url)

    async def work(self, retry_policy: RetryPolicy | None = None) -> None:
        """Run one arq worker until the queue (deferred retries included) is empty."""
        settings = worker_settings(self.live(), self.redis_url, retry_policy)
        settings["cron_jobs"] = []  # a burst worker ends when the queue is empty; cron would refill it
        worker = Worker(**settings, burst=True)
        try:
            await worker.main()
        finally:
            await worker.close()

    async def job(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run one job function with a worker's start-up context, as arq would."""
        settings = worker_settings(self.live(), self.redis_url)
        redis = await create_pool(settings["redis_settings"])
        ctx: dict[str, Any] = {"redis": redis}
        await settings["on_startup"](ctx)
        try:
            return await function(ctx, *args)
        finally:
            await settings["on_shutdown"](ctx)
            await redis.aclose()

    async def poll(self, now: float | None = None) -> int:
        """One poll tick, as the worker's cron job runs it; returns the events emitted."""
        return int(await self.job(poll_tick, now))

    async def logged(self) -> list[sa.Row]:
        engine = db.create_engine(self.live().current.database_url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(sa.select(db.events).order_by(db.events.c.id))).all())
        finally:
            await engine.dispose()
