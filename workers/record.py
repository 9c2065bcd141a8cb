"""Writing events: the log row, the state changes and the planned deliveries, together.

One event must never stop the others. A row the database refuses for what it holds
(a value out of range, a NUL byte, a field too long) would fail every batch it is in
and, since a system's events are logged in order, block the system for good. So a
batch that fails on its data is written again one event at a time, and the event that
fails alone is logged another way: `data` as JSON text (a string), `entity` and
`previous` null, no state change, every text field made storable. It stays visible,
in order, and is delivered like any other.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec
import sqlalchemy as sa

from pkrelay import db
from pkrelay.config import Sink
from pkrelay.envelope import Event
from pkrelay.store import deliveries, state
from workers.metrics import EVENTS_LOGGED
from workers.outage import data_error
from workers.resources import Resources

log = logging.getLogger("pkrelay.worker")

Item = tuple[Event, list[state.Write]]


async def record(res: Resources, system: str, items: list[Item]) -> set[str]:
    """Log events of one system in one transaction and enqueue their deliveries;
    returns the ids that were new (a rerun inserts nothing and changes no state)."""
    # A new event's planned deliveries are the ones `_write` just inserted: they go
    # straight to the queue. Only a rerun (or a batch stored one by one) asks the
    # database which deliveries are still pending.
    sinks = res.settings.sinks
    try:
        new = await _write(res, system, items, sinks)
        fresh = [(e.id, key) for e, _ in items if e.id in new for key in deliveries.wanted(e.type, system, sinks)]
        ask = [e.id for e, _ in items if e.id not in new]
    except Exception as exc:
        if not data_error(exc):
            raise
        new = await _one_by_one(res, system, items, sinks, exc)
        fresh, ask = [], [e.id for e, _ in items]
    await deliveries.enqueue(res.redis, fresh)
    if ask:
        async with res.engine.connect() as conn:
            await deliveries.enqueue_pending(res.redis, conn, ask)
    for event, _ in items:
        if event.id in new:
            EVENTS_LOGGED.labels(event.type, event.source).inc()
        log.debug("%s %s %s from %s", "logged" if event.id in new else "already logged", event.type, event.id,
                  event.source)
    return new


async def _write(res: Resources, system: str, items: list[Item], sinks: list[Sink]) -> set[str]:
    logged_at = datetime.now(UTC)
    async with res.engine.begin() as conn:
        # INSERT ... ON CONFLICT DO NOTHING RETURNING id for the whole batch: the new
        # ids. Given as many parameter sets (not one multi-row VALUES, which SQLAlchemy
        # would compile afresh for every batch), it is compiled once and still sent as
        # multi-row statements.
        new = set((await conn.execute(
            db.insert_ignoring_duplicates(conn, db.events).returning(db.events.c.id),
            [dict(id=event.id, type=event.type, source=event.source, system=system, system_id=event.system_id,
                  entity_id=event.entity_id, received_at=event.received_at, data=event.data, entity=event.entity,
                  previous=event.previous, logged_at=logged_at) for event, _ in items],
        )).scalars())
        # The batch's state changes, each system's in one go (state.coalesced).
        by_system: dict[str, list[state.Write]] = {}
        for event, writes in items:
            if event.id in new and event.system_id:
                by_system.setdefault(event.system_id, []).extend(writes)
        for system_id, writes in by_system.items():
            await state.apply(conn, system_id, writes)
        await deliveries.plan_all(conn, [(event.id, event.type) for event, _ in items], system, sinks)
    return new


async def _one_by_one(res: Resources, system: str, items: list[Item], sinks: list[Sink],
                      batch_error: Exception) -> set[str]:
    """Which one? Each alone; the one that fails is logged as text."""
    new: set[str] = set()
    for event, writes in items:
        error = batch_error
        if len(items) > 1:
            try:
                new |= await _write(res, system, [(event, writes)], sinks)
                continue
            except Exception as exc:
                if not data_error(exc):
                    raise
                error = exc
        log.warning("%s %s cannot be stored as sent (%s): logged with its data as text, without entity",
                    event.type, event.id, _reason(error))
        new |= await _write(res, system, [(as_text(event), [])], sinks)
    return new


def _reason(exc: BaseException) -> str:
    """The database's complaint, first line only (it can quote the whole statement)."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"[:300]


def _fit(value: str | None, column: sa.Column[str]) -> str | None:
    """A text field any database stores: no NUL byte (PostgreSQL refuses them), cut to
    the column's length."""
    if value is None:
        return None
    length = getattr(column.type, "length", None)
    return value.replace("\x00", "\ufffd")[:length]


def json_text(data: object) -> str:
    """`data` as JSON text, whatever it holds."""
    try:
        return msgspec.json.encode(data).decode()
    except (TypeError, ValueError, OverflowError):
        return repr(data)


def as_text(event: Event) -> Event:
    """The event in a form every database stores: `data` as JSON text, no entity."""
    e = db.events.c
    data = event.data if isinstance(event.data, str) else json_text(event.data)
    return msgspec.structs.replace(
        event, type=_fit(event.type, e.type) or "", system_id=_fit(event.system_id, e.system_id),
        entity_id=_fit(event.entity_id, e.entity_id), data=data, entity=None, previous=None)
