"""The ingest job: one queued dispatch becomes one enriched row of the event log.

The row's primary key is the event id the receiver assigned, so a job that runs
twice (a worker killed mid-job, a spooled event enqueued again) logs one event; its
state changes and deliveries are written in the same transaction.

A system's events are logged in arrival order: the receiver puts each event (and its
payload) in its system's pending set, and whichever job holds the system's lock logs
the pending events oldest first, up to its own (and one batch more, of those that
arrived meanwhile). Jobs of later events then find theirs already logged. So
`previous` always chains, whatever order arq runs jobs in, and a burst costs no
waiting beyond the lock.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import sqlalchemy as sa
from arq import Retry
from redis.exceptions import LockError

from pkrelay import db, keys, queue
from pkrelay.config import SystemConfig
from pkrelay.envelope import Event, ms_to_datetime
from pkrelay.pluralkit import errors
from pkrelay.retry import Backoff, Retryable
from pkrelay.store import state
from pkrelay.system_lock import SystemLock
from workers import schedule
from workers.enrich import Enriched, enrich
from workers.outage import survives_outages
from workers.record import record
from workers.resources import Resources

log = logging.getLogger("pkrelay.worker")

# A fetch that keeps failing (API down) is retried with backoff (2 s doubling to 5
# minutes) for about an hour; then the event is logged without `entity` rather than
# held back any longer.
ENRICH_ATTEMPTS = 16
ENRICH_RETRY = Backoff(base=2.0, cap=300.0)
# Events logged per transaction when a system has a backlog.
BATCH = 50
# A job waits this long for its system's lock, then tries again this much later.
LOCK_WAIT_S = 0.05
LOCK_RETRY_S = 0.1
# An event of a system this worker cannot find in its config file waits this long
# after its receipt (checking again this often) before it is logged without entity.
RELOAD_GRACE_S = 10.0
RELOAD_RETRY_S = 0.25


def envelope_of(job: queue.QueuedDispatch, data: Any, enriched: Enriched) -> Event:
    return Event(
        id=job.event_id,
        type=job.type,
        source="dispatch",
        system_id=job.system_id,
        entity_id=job.entity_id,
        received_at=ms_to_datetime(job.received_ms),
        data=data,
        entity=enriched.entity,
        previous=enriched.previous,
    )


def _system(res: Resources, job: queue.QueuedDispatch) -> SystemConfig | None:
    """The event's system. The receiver accepted the event, so it knew the system: one
    this worker does not know yet was added to the file since its last reload (the
    receiver's came first), and it reloads now rather than on the watcher's next tick.
    Until RELOAD_GRACE_S after receipt the event waits for a file still being written."""
    system = res.settings.system(job.system)
    if system is None and res.live.catch_up():
        system = res.settings.system(job.system)
    if system is None and time.time() * 1000 - job.received_ms < RELOAD_GRACE_S * 1000:
        log.info("%s %s: system %r is not in this worker's config yet; waiting for it", job.type, job.event_id,
                 job.system)
        raise Retry(defer=RELOAD_RETRY_S)
    return system


async def _enrich(res: Resources, tries: int, view: state.View, job: queue.QueuedDispatch,
                  data: Any) -> Enriched:
    system = _system(res, job)
    if system is None:
        return Enriched(note="the system is no longer configured")
    try:
        return await enrich(view, res.client(system), job.type, job.system_id, job.entity_id, data)
    except Retryable as exc:
        if tries >= ENRICH_ATTEMPTS:
            return Enriched(note=f"the API kept failing ({type(exc).__name__}); logged without entity")
        delay = exc.retry_in or ENRICH_RETRY.delay(tries)
        log.warning("enriching %s failed (%s), retrying in %.1f s", job.event_id, type(exc).__name__, delay)
        raise Retry(defer=delay) from None
    except errors.ApiError as exc:
        return Enriched(note=f"the API refused: {exc}")


def _data(job: queue.QueuedDispatch) -> tuple[Any, str | None]:
    """The event's `data`, or, when it cannot be read as stored JSON (an integer of
    thousands of digits in a key PluralKit's model does not check), its text and why."""
    try:
        return msgspec.json.decode(job.data), None
    except msgspec.DecodeError as exc:
        return job.data.decode("utf-8", "replace"), str(exc)


@survives_outages
async def ingest_dispatch(ctx: dict[str, Any], payload: bytes) -> bool:
    """Log this event, after every older pending event of its system; True when this
    job's event was logged by this call."""
    job = queue.decode(payload)
    res = Resources.of(ctx)
    tries: int = ctx.get("job_try", 1)
    redis = res.redis
    pending, payloads = keys.pending(job.system), keys.payloads(job.system)
    lock = SystemLock(redis, job.system)
    # An event leaves the pending set only once it is logged: while another job holds
    # the system's lock, it may well log ours, and then there is nothing to do. A job
    # that finds the lock held steps aside for a moment rather than hold a worker's
    # slot polling it (under a burst most of a system's jobs would).
    if await redis.zscore(pending, job.event_id) is None:
        return False
    if not await lock.acquire(blocking_timeout=LOCK_WAIT_S):
        raise Retry(defer=LOCK_RETRY_S)
    try:
        ours: bool | None = None  # once our event is logged: whether this job logged it
        while True:
            ids = [i.decode() for i in await redis.zrange(pending, 0, BATCH - 1)]
            if ours is not None and not ids:
                return ours
            if not ids or (ours is None and ids[0] > job.event_id):
                return bool(await _log(res, tries, [job]))  # ours is done (or was never pending): make sure
            raws = await redis.hmget(payloads, ids)
            jobs = [payload if i == job.event_id else raw for i, raw in zip(ids, raws, strict=True)]
            done = await _log(res, tries, [queue.decode(raw) for raw in jobs if raw is not None])
            await queue.logged(redis, job.system, ids, job.event_id)
            await lock.reacquire()
            if ours is not None:
                return ours
            if job.event_id in ids:
                # One round more, for what arrived while we worked: their jobs would
                # only wait for this lock.
                ours = job.event_id in done
    finally:
        try:
            await lock.release()
        except LockError:
            log.warning("held the lock of %s longer than %d s", job.system, lock.lease.seconds)


async def _log(res: Resources, tries: int, jobs: list[queue.QueuedDispatch]) -> set[str]:
    """Enrich a run of one system's events in order, then log them, their state changes
    and their planned deliveries in one transaction; returns the ids that were new.

    If the API fails part way (the job will retry), the events enriched so far are
    logged and the rest left pending, so nothing is done twice.
    """
    done: list[tuple[Event, queue.QueuedDispatch, Enriched]] = []
    failure: Retry | None = None
    async with res.engine.connect() as conn:
        ids = [j.event_id for j in jobs]
        logged = set((await conn.execute(sa.select(db.events.c.id).where(db.events.c.id.in_(ids)))).scalars())
        views: dict[str, state.View] = {}  # by system UUID: a view reads only its system's rows
        for job in jobs:
            view = views.setdefault(job.system_id or "", state.View(conn, job.system_id or ""))
            data, unreadable = _data(job)
            try:
                if unreadable:
                    log.warning("%s %s: its data cannot be stored as sent (%s): logged as text, without entity",
                                job.type, job.event_id, unreadable)
                    enriched = Enriched()
                else:
                    enriched = Enriched() if job.event_id in logged else await _enrich(res, tries, view, job, data)
            except Retry as exc:
                failure = exc
                break
            if enriched.note:
                log.info("%s %s: entity null: %s", job.type, job.event_id, enriched.note)
            if job.type in ("UPDATE_MEMBER", "UPDATE_GROUP", "UPDATE_SWITCH") and enriched.previous is None \
                    and job.event_id not in logged:
                await schedule.reconcile_soon(res.redis, job.system)  # an entity we never saw: we missed something
            await view.record(enriched.writes)
            done.append((envelope_of(job, data, enriched), job, enriched))
    items = [(event, enriched.writes) for event, _, enriched in done]
    new = await record(res, jobs[0].system, items) if items else set()
    calls = sum(enriched.calls for _, _, enriched in done)
    if calls:
        log.debug("%d API calls for %d events", calls, len(done))
    if failure is not None:
        if done:
            system, logged_ids = jobs[0].system, [e.id for e, _, _ in done]
            await res.redis.zrem(keys.pending(system), *logged_ids)
            await res.redis.hdel(keys.payloads(system), *logged_ids)
        raise failure
    return new
