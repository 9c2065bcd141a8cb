"""The arq worker settings: the one seam that wires jobs to their resources."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from arq import cron, func
from arq.connections import RedisSettings

from pkrelay import db, logs
from pkrelay.config import LiveSettings, Settings
from workers.deliver import deliver
from workers.deliveries import RetryPolicy
from workers.ingest import ingest_dispatch
from workers.poll import poll_tick
from workers.resources import CTX_KEY, Resources
from workers.retention import prune_events
from workers.sweep import SWEEP_EVERY_S, sweep

# A worker killed mid-job leaves it "in progress" until job_timeout + 10 s; the
# 2-minute redelivery guarantee (docs/contract.md) needs job_timeout well under 110 s.
JOB_TIMEOUT_S = 60


def worker_settings(live: LiveSettings, redis_url: str, retry_policy: RetryPolicy | None = None) -> dict[str, Any]:
    """Keyword arguments for arq.Worker."""

    def config_changed(fresh: Settings) -> None:
        logs.setup(fresh.secrets(), "worker")

    async def startup(ctx: dict[str, Any]) -> None:
        ctx[CTX_KEY] = Resources(
            live=live, engine=db.create_engine(live.current.database_url), redis=ctx["redis"],
            http=httpx.AsyncClient(follow_redirects=False),
            retry_policy=retry_policy or RetryPolicy.of(live.current.delivery),
            watcher=asyncio.create_task(live.watch(config_changed)),
        )
        Resources.of(ctx).open_sinks()

    async def shutdown(ctx: dict[str, Any]) -> None:
        await Resources.of(ctx).aclose()

    return {
        # Every start counts toward max_tries (waiting for a system's older event too),
        # so arq's bound is only a backstop: the jobs themselves decide when to stop
        # (ingest logs without entity after ENRICH_ATTEMPTS; deliveries dead-letter
        # after their retry window).
        "functions": [func(ingest_dispatch, max_tries=10_000), func(deliver, max_tries=200)],
        "cron_jobs": [
            cron(prune_events, minute=17, run_at_startup=True),
            # Every second; arq runs each slot on one worker only.
            cron(poll_tick, second=set(range(60)), timeout=30, max_tries=1, keep_result=0),
            # Work no job holds (a job lost or given up on) gets one again.
            cron(sweep, second=set(range(0, 60, SWEEP_EVERY_S)), run_at_startup=True, timeout=30, max_tries=1,
                 keep_result=0),
        ],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_timeout": JOB_TIMEOUT_S,
        "max_jobs": 20,
        # arq polls rather than blocks; at 20 ms an event crosses its two jobs (ingest,
        # deliver) in tens of milliseconds, for about 50 cheap Redis calls a second.
        "poll_delay": 0.02,
        "keep_result": 0,  # the event log is the record; results would only fill Redis
        "handle_signals": True,
    }
