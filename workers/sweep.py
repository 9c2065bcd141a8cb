"""The sweep: whatever is still to do and no job holds gets a job again.

Jobs carry the work, but a job can be lost while its work is not: a worker killed
between logging an event and enqueuing its deliveries, a job arq gave up on (its
tries spent through a long outage), a failure nobody foresaw. The work itself is
recorded (pending events in their system's Redis set, pending deliveries in the
database), so a cron job looks at it every `SWEEP_EVERY_S` and enqueues a job for
anything no job holds. Job ids make this idempotent: arq enqueues nothing while a job
of that id is queued, deferred for a retry or in progress.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from pkrelay import db, keys, queue
from pkrelay.store import deliveries, sinks
from workers.outage import transient
from workers.resources import Resources

log = logging.getLogger("pkrelay.sweep")

SWEEP_EVERY_S = 30
# Pending deliveries looked at per sweep, oldest first (a sink down for a day can hold
# many; each sweep takes the next ones only if these hold jobs).
DELIVERY_BATCH = 5000


async def sweep(ctx: dict[str, Any]) -> int:
    """Enqueue a job for every pending event and delivery no job holds; returns how many."""
    res = Resources.of(ctx)
    try:
        return await ingest_orphans(res) + await delivery_orphans(res)
    except Exception as exc:
        if not transient(exc):
            raise
        log.warning("sweep skipped: the database is unavailable (%s)", type(exc).__name__)
        return 0


async def ingest_orphans(res: Resources) -> int:
    """For each system with pending events: a job for its newest one (which logs every
    older one first), unless that job exists."""
    redis, enqueued = res.redis, 0
    async for key in redis.scan_iter(match=keys.pending("*"), count=500):
        system = key.decode().removeprefix(keys.pending(""))
        newest = await redis.zrange(key, -1, -1)
        if not newest:
            continue
        event_id = newest[0].decode()
        payload = await redis.hget(keys.payloads(system), event_id)
        if payload is None:  # no way to log it: drop it rather than hold the system back
            log.warning("pending event %s of %s has no payload; dropped", event_id, system)
            await redis.zrem(key, event_id)
            continue
        job = await redis.enqueue_job(queue.INGEST_JOB, payload, _job_id=event_id,
                                      _expires=timedelta(milliseconds=queue.JOB_EXPIRY_MS))
        if job is not None:
            enqueued += 1
            log.warning("%s had pending events no job held; ingest enqueued again", system)
    return enqueued


async def delivery_orphans(res: Resources) -> int:
    """A deliver job for every pending delivery that has none, but those a disabled
    sink holds (enabling the sink queues them)."""
    d = db.deliveries
    async with res.engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(d.c.event_id, d.c.sink).where(d.c.status == "pending", d.c.sink.not_in(sinks.disabled_keys()))
            .order_by(d.c.event_id)
            .limit(DELIVERY_BATCH))).all()
    enqueued = await deliveries.enqueue(res.redis, [(row.event_id, row.sink) for row in rows])
    if enqueued:
        log.warning("%d pending deliveries had no job; enqueued again", enqueued)
    return enqueued
