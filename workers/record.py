"""Writing events: the log row, the state changes and the planned deliveries, together."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pkrelay import db
from pkrelay.envelope import Event
from workers import deliveries, state
from workers.metrics import EVENTS_LOGGED
from workers.resources import Resources

log = logging.getLogger("pkrelay.worker")


async def record(res: Resources, system: str, items: list[tuple[Event, list[state.Write]]]) -> set[str]:
    """Log events of one system in one transaction and enqueue their deliveries;
    returns the ids that were new (a rerun inserts nothing and changes no state)."""
    new: set[str] = set()
    logged_at = datetime.now(UTC)
    sinks = res.settings.sinks
    async with res.engine.begin() as conn:
        for event, writes in items:
            result = await conn.execute(db.insert_ignoring_duplicates(conn, db.events).values(
                id=event.id, type=event.type, source=event.source, system=system, system_id=event.system_id,
                entity_id=event.entity_id, received_at=event.received_at, data=event.data, entity=event.entity,
                previous=event.previous, logged_at=logged_at,
            ))
            if result.rowcount:
                new.add(event.id)
                if event.system_id:
                    await state.apply(conn, event.system_id, writes)
            await deliveries.plan(conn, event.id, event.type, system, sinks)
    async with res.engine.connect() as conn:
        await deliveries.enqueue_pending(res.redis, conn, [event.id for event, _ in items])
    for event, _ in items:
        if event.id in new:
            EVENTS_LOGGED.labels(event.type, event.source).inc()
        log.info("%s %s %s from %s", "logged" if event.id in new else "already logged", event.type, event.id,
                 event.source)
    return new
