"""Jobs through Redis between the receiver and the workers, each a round trip.

The receiver enqueues arq jobs itself in one round trip (arq's own `enqueue_job`
spends three: WATCH, EXISTS, MULTI/EXEC, to make job ids unique).
Our job ids are fresh event ids, so the uniqueness check buys nothing on this path,
and the workers' insert-or-ignore on the event id absorbs the rare duplicate (a reply
lost after Redis executed the transaction, then the spool enqueuing it again).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from pkrelay import keys
from pkrelay.queue import scripts
from pkrelay.queue.wire import HOLD_MS, IN_PROGRESS_MS, INGEST_JOB, JOB_EXPIRY_MS


def connect(url: str, timeout: float = 1.0) -> Redis:
    """A client that fails fast, so a dead Redis sends events to the spool quickly."""
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def enqueue(redis: Redis, items: list[tuple[str, str, bytes]], function: str = INGEST_JOB) -> None:
    """Enqueue (event id, system, payload) as arq jobs, atomically, in one round trip."""
    now = _now_ms()
    names = [default_queue_name, *(job_key_prefix + i for i, _, _ in items),
             *(keys.pending(s) for _, s, _ in items), *(keys.payloads(s) for _, s, _ in items)]
    jobs = [serialize_job(function, (payload,), {}, None, now) for _, _, payload in items]
    await scripts.ENQUEUE(redis, names, [JOB_EXPIRY_MS, now, *jobs, *(i for i, _, _ in items),
                                         *(p for _, _, p in items)])


@dataclass(frozen=True)
class Job:
    """One arq job to enqueue: its id, the function's arguments, and the id of the
    job (earlier in the same call) that is to do its work, if one is."""

    id: str
    args: tuple[object, ...]
    holder: str = ""


async def enqueue_unique(redis: Redis, function: str, jobs: Sequence[Job], expiry_ms: int) -> int:
    """Enqueue jobs of `function` as arq's `enqueue_job` would, skipping ids that
    already have a job or a result, in one round trip; returns how many were new."""
    if not jobs:
        return 0
    now = _now_ms()
    names = [default_queue_name, *(job_key_prefix + j.id for j in jobs), *(result_key_prefix + j.id for j in jobs)]
    serialized = [serialize_job(function, j.args, {}, None, now) for j in jobs]
    return int(await scripts.ENQUEUE_UNIQUE(redis, names, [
        expiry_ms, now, in_progress_key_prefix, HOLD_MS, *(j.id for j in jobs), *serialized,
        *(j.holder for j in jobs)]))


async def take_over(redis: Redis, taker: str, job_ids: list[str]) -> list[str]:
    """Take these jobs for the running job `taker` if they are held for it, or due and
    waiting; returns the ids taken."""
    if not job_ids:
        return []
    taken = await scripts.TAKE_OVER(redis, [default_queue_name], [
        _now_ms(), in_progress_key_prefix, IN_PROGRESS_MS, taker, *job_ids])
    return [i.decode() for i in taken]


async def release(redis: Redis, done: Sequence[str] = (), retry: Mapping[str, float] | None = None) -> None:
    """Finish taken jobs: `done` ones removed, `retry` ones (job id -> seconds) queued again."""
    retry = retry or {}
    if not done and not retry:
        return
    pairs = [x for job_id, delay in retry.items() for x in (job_id, int(delay * 1000))]
    await scripts.RELEASE(redis, [default_queue_name], [
        _now_ms(), in_progress_key_prefix, job_key_prefix, len(done), *done, *pairs])


async def logged(redis: Redis, system: str, event_ids: list[str], running: str) -> None:
    """These events of `system` are logged: drop them from its pending set and withdraw
    their waiting ingest jobs, all but `running` (the job doing this), in one round trip."""
    await scripts.LOGGED(redis, [keys.pending(system), keys.payloads(system), default_queue_name], [
        running, in_progress_key_prefix, job_key_prefix, *event_ids])


async def depth(redis: Redis) -> int:
    return int(await redis.zcard(default_queue_name))
