"""The ingest job: one queued dispatch becomes one row of the event log.

The row's primary key is the event id the receiver assigned, so a job that runs
twice (a worker killed mid-job, a spooled event enqueued again) logs one event; its
deliveries are planned in the same transaction and enqueued after it.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from pkrelay import db, queue
from workers import deliver
from pkrelay.envelope import Event, ms_to_datetime

log = logging.getLogger("pkrelay.worker")


def envelope_of(job: queue.QueuedDispatch) -> Event:
    return Event(
        id=job.event_id,
        type=job.type,
        source="dispatch",
        system_id=job.system_id,
        entity_id=job.entity_id,
        received_at=ms_to_datetime(job.received_ms),
        data=msgspec.json.decode(job.data),
    )


async def ingest_dispatch(ctx: dict[str, Any], payload: bytes) -> bool:
    """Log the event; True when it was new."""
    job = queue.decode(payload)
    event = envelope_of(job)
    engine = ctx["engine"]
    async with engine.begin() as conn:
        result = await conn.execute(
            db.insert_ignoring_duplicates(conn, db.events).values(
                id=event.id,
                type=event.type,
                source=event.source,
                system=job.system,
                system_id=event.system_id,
                entity_id=event.entity_id,
                received_at=event.received_at,
                data=event.data,
                entity=event.entity,
                previous=event.previous,
            )
        )
        await deliver.plan(conn, event.id, event.type, job.system, ctx["live"].current.sinks)
    new = bool(result.rowcount)
    async with engine.connect() as conn:
        await deliver.enqueue_pending(ctx["redis"], conn, [event.id])
    log.info("%s %s %s", "logged" if new else "already logged", event.type, event.id)
    return new
