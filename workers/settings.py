"""The arq worker settings: the one seam that wires jobs to their resources.

A restart of the Redis-compatible server costs seconds, not job timeouts: every
command rides out a short outage (the pool retries with backoff), a job whose Redis
call still fails is retried rather than failed, and the worker itself reconnects
instead of exiting (see `Worker`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import arq.worker
from arq import cron, func
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import WatchError

from pkrelay import db, logs, queue
from pkrelay.config import LiveSettings, Settings
from pkrelay.retry import Backoff
from pkrelay.store.deliveries import RetryPolicy
from workers import webhook
from workers.deliver import deliver
from workers.ingest import ingest_dispatch
from workers.outage import REDIS_DOWN
from workers.poll import poll_tick
from workers.resources import CTX_KEY, Resources
from workers.retention import prune_events
from workers.sweep import SWEEP_EVERY_S, sweep

# A worker killed mid-job leaves it "in progress" until job_timeout + 10 s; the
# 2-minute redelivery guarantee (docs/contract.md) needs job_timeout well under 110 s.
JOB_TIMEOUT_S = queue.JOB_TIMEOUT_S

log = logging.getLogger("pkrelay.worker")

# A connection lost while arq watches a job's key becomes a WatchError.
LOST_REDIS = (*REDIS_DOWN, WatchError)
# Each command retries for about 4 s (0.05 s doubling to 1 s) before it fails: a
# restart of a second or two goes unnoticed. OSError: a refused connect, which
# redis-py only wraps into a ConnectionError after its retries.
COMMAND_RETRY = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), 8)
COMMAND_RETRY_ON = [*REDIS_DOWN, OSError]
# Past that the worker reconnects on its own, at most 2 s after the server is back.
RECONNECT = Backoff(base=0.1, cap=2.0)
# A worker that ran this long since its last reconnect starts its backoff afresh.
STEADY_S = 30.0
class Worker(arq.worker.Worker):
    """arq's worker, which reconnects rather than exits when Redis goes away.

    arq's main loop ends on the first connection error, and the jobs it was running
    keep their `arq:in-progress:` keys (the server's append-only file brings them back
    after a restart), so no worker runs them again before job_timeout + 10 s. Here the
    loop waits with backoff and starts again on the same pool and resources; jobs
    still running carry on, and a job whose end arq could not record has its
    in-progress key removed once Redis answers, so it runs again at once.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._unfinished: set[str] = set()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = loop.time()
            try:
                await super().main()
                return
            except LOST_REDIS as exc:
                attempt = 1 if loop.time() - started > STEADY_S else attempt + 1
                delay = RECONNECT.delay(attempt)
                log.warning("lost Redis (%s: %s); %d jobs carry on; reconnecting in %.1f s",
                            type(exc).__name__, exc, sum(not t.done() for t in self.tasks.values()), delay)
                await asyncio.sleep(delay)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except LOST_REDIS:
                # arq takes a job slot before it checks the job's keys, and gives it
                # back only when they answer: without this, every blip would cost one.
                self.job_counter -= 1
                self.sem.release()
                raise

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except REDIS_DOWN:
            self._unfinished.add(job_id)

    async def _poll_iteration(self) -> None:
        idle = [job_id for job_id in self._unfinished if job_id not in self.tasks]
        if idle:
            await self.pool.delete(*(in_progress_key_prefix + job_id for job_id in idle))
            self._unfinished.difference_update(idle)
            log.info("Redis is back: %d interrupted jobs run again now", len(idle))
        await super()._poll_iteration()

    async def close(self) -> None:
        """arq's close, or without its Redis cleanup when Redis is away at shutdown."""
        try:
            await super().close()
        except REDIS_DOWN:
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)


def worker_settings(live: LiveSettings, redis_url: str, retry_policy: RetryPolicy | None = None) -> dict[str, Any]:
    """Keyword arguments for arq.Worker."""

    learning: set[asyncio.Task[None]] = set()
    resources: list[Resources] = []  # the process's, once started

    def learn_pins(resources: Resources) -> None:
        task = asyncio.get_running_loop().create_task(resources.learn_pins())
        learning.add(task)
        task.add_done_callback(learning.discard)

    def config_changed(fresh: Settings) -> None:
        logs.setup(fresh.secrets(), "worker")
        if resources:
            resources[0].open_sinks()  # an MQTT sink added: its retained state and discovery now
            learn_pins(resources[0])

    async def startup(ctx: dict[str, Any]) -> None:
        if CTX_KEY in ctx:
            return  # a reconnect (Worker.main): the pool and resources carry on
        ctx[CTX_KEY] = Resources(
            live=live, engine=db.create_engine(live.current.database_url), redis=ctx["redis"],
            http=webhook.session(),
            retry_policy=retry_policy or RetryPolicy.of(live.current.delivery),
            watcher=asyncio.create_task(live.watch(config_changed)),
        )
        Resources.of(ctx).open_sinks()
        resources[:] = [Resources.of(ctx)]
        learn_pins(resources[0])

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
        "redis_settings": dataclasses.replace(RedisSettings.from_dsn(redis_url), retry=COMMAND_RETRY,
                                              retry_on_error=COMMAND_RETRY_ON),
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
