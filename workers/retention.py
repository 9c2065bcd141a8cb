"""Retention: the event log keeps `database.retention_days` of history (arq cron)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from pkrelay import db
from workers.resources import Resources

log = logging.getLogger("pkrelay.retention")


async def prune_events(ctx: dict[str, Any]) -> int:
    """Delete events older than the retention, with their deliveries; returns how many."""
    res = Resources.of(ctx)
    days = res.settings.database.retention_days
    cutoff = datetime.now(UTC) - timedelta(days=days)
    old = sa.select(db.events.c.id).where(db.events.c.received_at < cutoff).scalar_subquery()
    async with res.engine.begin() as conn:
        # Children first: SQLite does not enforce ON DELETE CASCADE unless asked per connection.
        await conn.execute(db.delivery_attempts.delete().where(db.delivery_attempts.c.event_id.in_(old)))
        await conn.execute(db.deliveries.delete().where(db.deliveries.c.event_id.in_(old)))
        result = await conn.execute(db.events.delete().where(db.events.c.received_at < cutoff))
    if result.rowcount:
        log.info("pruned %d events older than %d days", result.rowcount, days)
    return int(result.rowcount)
