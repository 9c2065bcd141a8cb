"""The `sinks` table: each sink's health, shared by every worker and kept across restarts.

The Standard Webhooks sender rules live here: a `410 Gone` disables a sink at once; a
sink whose every attempt failed for `delivery.disable_after_h` is disabled too; a
disabled sink's deliveries stay pending (held: no job sends them, the sweep leaves
them) until `enable`; a `Retry-After` holds the sink's next attempt back (`hold_until`).
A sink without a row is active and has never been tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pkrelay import db
from pkrelay.config import Sink
from pkrelay.store import deliveries

ACTIVE, DISABLED = "active", "disabled"
GONE_REASON = "HTTP 410 Gone: the receiver asked for no more deliveries"


@dataclass(frozen=True)
class Health:
    """What a deliver job needs to know before sending."""

    disabled: bool = False
    hold_until: datetime | None = None


@dataclass(frozen=True)
class Batch:
    """What one deliver job's attempts to a sink came to."""

    succeeded: int
    failed: int
    gone: bool  # a 410 among them
    last_error: str | None
    retry_at: datetime | None  # the earliest retry the failures were given
    hold_until: datetime | None  # a Retry-After: no attempt before


async def health(conn: AsyncConnection, key: str) -> Health:
    t = db.sinks
    row = (await conn.execute(sa.select(t.c.state, t.c.hold_until).where(t.c.key == key))).first()
    if row is None:
        return Health()
    return Health(disabled=row.state == DISABLED, hold_until=row.hold_until)


async def _row(conn: AsyncConnection, key: str) -> sa.Row[Any]:
    """The sink's row, made when missing (active), in this write transaction."""
    await conn.execute(db.insert_ignoring_duplicates(conn, db.sinks), [{"key": key, "state": ACTIVE}])
    return (await conn.execute(sa.select(db.sinks).where(db.sinks.c.key == key))).one()


async def record(conn: AsyncConnection, key: str, batch: Batch, disable_after: timedelta) -> bool:
    """Inside the transaction that settles the batch: the sink's new health; whether it
    is disabled (now or before), in which case its failed deliveries are held."""
    now = datetime.now(UTC)
    row = await _row(conn, key)
    values: dict[str, Any] = {}
    if batch.succeeded:
        values.update(last_success_at=now, failing_since=None)
    if batch.failed:
        values.update(last_error=batch.last_error, last_error_at=now, next_attempt_at=batch.retry_at)
        failing_since = row.failing_since if not batch.succeeded else None
        if not batch.succeeded and failing_since is None:
            values["failing_since"] = failing_since = now
    else:
        values["next_attempt_at"] = None
    if batch.hold_until is not None and (row.hold_until is None or batch.hold_until > row.hold_until):
        values["hold_until"] = batch.hold_until
    disabled: bool = row.state == DISABLED
    if not disabled:
        reason = None
        if batch.gone:
            reason = GONE_REASON
        elif batch.failed and not batch.succeeded and failing_since is not None \
                and now - failing_since >= disable_after:
            hours = disable_after.total_seconds() / 3600
            reason = f"every attempt failed for {hours:g} h (since {failing_since:%Y-%m-%d %H:%M:%S} UTC)"
        if reason is not None:
            values.update(state=DISABLED, disabled_reason=reason, disabled_at=now, next_attempt_at=None)
            disabled = True
    await conn.execute(db.sinks.update().where(db.sinks.c.key == key).values(**values))
    return disabled


async def enable(engine: AsyncEngine, redis: Redis, key: str) -> int:
    """Resume a sink: active again, and its held deliveries queued with a fresh retry
    window (the time it spent disabled does not count against them); returns how many."""
    d = db.deliveries
    async with engine.begin() as conn:
        await _row(conn, key)
        await conn.execute(db.sinks.update().where(db.sinks.c.key == key).values(
            state=ACTIVE, disabled_reason=None, disabled_at=None, failing_since=None, hold_until=None,
            next_attempt_at=None))
        where = sa.and_(d.c.sink == key, d.c.status == "pending")
        ids = list((await conn.execute(sa.select(d.c.event_id).where(where))).scalars())
        await conn.execute(d.update().where(where).values(first_attempt_at=None))
    if ids:
        await deliveries.enqueue(redis, [(event_id, key) for event_id in ids])
    return len(ids)


def disabled_keys() -> sa.Select[tuple[str]]:
    """The keys of disabled sinks, for a query that must leave their deliveries alone."""
    return sa.select(db.sinks.c.key).where(db.sinks.c.state == DISABLED)


class SinkStatus(msgspec.Struct, kw_only=True):
    """One sink as operators see it (`GET /api/sinks`, `pkrelay sinks list`)."""

    name: str
    type: str
    state: str
    disabled_reason: str | None
    disabled_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    next_attempt_at: datetime | None
    counts: dict[str, int]  # deliveries by state: pending, delivered, dead, skipped


async def listing(engine: AsyncEngine, sinks: list[Sink]) -> list[SinkStatus]:
    """Every configured sink, in config order, with its health and delivery counts."""
    t, d = db.sinks, db.deliveries
    async with engine.connect() as conn:
        rows = {r.key: r for r in (await conn.execute(sa.select(t))).all()}
        counts: dict[str, dict[str, int]] = {}
        for key, status, n in (await conn.execute(
                sa.select(d.c.sink, d.c.status, sa.func.count()).group_by(d.c.sink, d.c.status))).all():
            counts.setdefault(key, {})[status] = n
    now = datetime.now(UTC)
    out = []
    for sink in sinks:
        row = rows.get(sink.key)
        nexts = [v for v in (row.next_attempt_at, row.hold_until) if v is not None] if row else []
        upcoming = max(nexts) if nexts else None
        out.append(SinkStatus(
            name=sink.key, type=str(sink.__struct_config__.tag), state=row.state if row else ACTIVE,
            disabled_reason=row.disabled_reason if row else None, disabled_at=row.disabled_at if row else None,
            last_success_at=row.last_success_at if row else None, last_error=row.last_error if row else None,
            last_error_at=row.last_error_at if row else None,
            next_attempt_at=upcoming if upcoming is not None and upcoming > now else None,
            counts={s: counts.get(sink.key, {}).get(s, 0) for s in ("pending", "delivered", "dead", "skipped")}))
    return out
