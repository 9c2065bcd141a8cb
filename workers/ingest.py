"""The ingest job: one queued dispatch becomes one enriched row of the event log.

The row's primary key is the event id the receiver assigned, so a job that runs
twice (a worker killed mid-job, a spooled event enqueued again) logs one event; its
state changes and deliveries are written in the same transaction.

A system's events are logged in arrival order: the receiver puts each event (and its
payload) in its system's pending set, and whichever job holds the system's lock logs
the pending events oldest first, up to its own. Jobs of later events then find theirs
already logged. So `previous` always chains, whatever order arq runs jobs in, and a
burst costs no waiting beyond the lock.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import msgspec
import sqlalchemy as sa
from arq import Retry
from redis.exceptions import LockError

from pkrelay import db, queue
from pkrelay.config import SystemConfig
from pkrelay.envelope import Event, ms_to_datetime
from pkrelay.pluralkit import errors
from workers import deliver
from workers.api import client_for
from workers.enrich import Enriched, apply, enrich
from workers.metrics import EVENTS_LOGGED

log = logging.getLogger("pkrelay.worker")

# A fetch that keeps failing (API down) is retried with backoff for about an hour;
# then the event is logged without `entity` rather than held back any longer.
ENRICH_ATTEMPTS = 16
# A worker killed while holding a system's lock holds it this long at most; well
# within SPEC's two minutes for redelivery after a crash.
LOCK_S = 60


def envelope_of(job: queue.QueuedDispatch, enriched: Enriched) -> Event:
    return Event(
        id=job.event_id,
        type=job.type,
        source="dispatch",
        system_id=job.system_id,
        entity_id=job.entity_id,
        received_at=ms_to_datetime(job.received_ms),
        data=msgspec.json.decode(job.data),
        entity=enriched.entity,
        previous=enriched.previous,
    )


async def _enrich(ctx: dict[str, Any], job: queue.QueuedDispatch, system: SystemConfig | None,
                  data: Any) -> Enriched:
    if system is None:
        return Enriched(note="the system is no longer configured")
    try:
        async with ctx["engine"].connect() as conn:
            return await enrich(conn, client_for(ctx, system), job.type, job.system_id, job.entity_id, data)
    except (errors.TransportError, errors.ServerError, errors.RateLimited, errors.RateLimitWaitExceeded) as exc:
        tries = ctx.get("job_try", 1)
        if tries >= ENRICH_ATTEMPTS:
            return Enriched(note=f"the API kept failing ({type(exc).__name__}); logged without entity")
        delay = getattr(exc, "defer_seconds", None) or min(300.0, 2.0 ** tries) * random.uniform(0.5, 1.0)
        log.warning("enriching %s failed (%s), retrying in %.1f s", job.event_id, type(exc).__name__, delay)
        raise Retry(defer=delay) from None
    except errors.ApiError as exc:
        return Enriched(note=f"the API refused: {exc}")


async def ingest_dispatch(ctx: dict[str, Any], payload: bytes) -> bool:
    """Log this event, after every older pending event of its system; True when it
    was this job that logged it."""
    job = queue.decode(payload)
    redis = ctx["redis"]
    lock = redis.lock(f"pkrelay:lock:{job.system}", timeout=LOCK_S, sleep=0.01)
    if not await lock.acquire(blocking_timeout=5):
        raise Retry(defer=0.5)  # another worker is busy with this system; it may log ours too
    try:
        pending, payloads = queue.pending_key(job.system), queue.payloads_key(job.system)
        while True:
            head = await redis.zrange(pending, 0, 0)
            if not head or head[0].decode() > job.event_id:
                return await _log(ctx, job)  # ours was logged (or never pending): make sure
            head_id = head[0].decode()
            raw = payload if head_id == job.event_id else await redis.hget(payloads, head_id)
            if raw is not None:
                await _log(ctx, queue.decode(raw))
            await redis.zrem(pending, head_id)
            await redis.hdel(payloads, head_id)
            if head_id == job.event_id:
                return True
    finally:
        try:
            await lock.release()
        except LockError:
            log.warning("held the lock of %s longer than %d s", job.system, LOCK_S)


async def _log(ctx: dict[str, Any], job: queue.QueuedDispatch) -> bool:
    """Enrich and log one event, with its state changes and planned deliveries."""
    engine = ctx["engine"]
    async with engine.connect() as conn:
        logged = (await conn.execute(sa.select(db.events.c.id).where(db.events.c.id == job.event_id))).first()
    system = next((s for s in ctx["live"].current.systems if s.name == job.system), None)
    data = msgspec.json.decode(job.data)
    enriched = Enriched() if logged else await _enrich(ctx, job, system, data)
    if enriched.note:
        log.info("%s %s: entity null: %s", job.type, job.event_id, enriched.note)
    event = envelope_of(job, enriched)
    async with engine.begin() as conn:
        result = await conn.execute(
            db.insert_ignoring_duplicates(conn, db.events).values(
                id=event.id, type=event.type, source=event.source, system=job.system, system_id=event.system_id,
                entity_id=event.entity_id, received_at=event.received_at, data=event.data, entity=event.entity,
                previous=event.previous,
            )
        )
        new = bool(result.rowcount)
        if new and job.system_id:
            await apply(conn, job.system_id, enriched.writes)
        await deliver.plan(conn, event.id, event.type, job.system, ctx["live"].current.sinks)
    async with engine.connect() as conn:
        await deliver.enqueue_pending(ctx["redis"], conn, [event.id])
    if new:
        EVENTS_LOGGED.labels(event.type, event.source).inc()
    log.info("%s %s %s (%d API calls)", "logged" if new else "already logged", event.type, event.id, enriched.calls)
    return new
