"""Reading the event log: shared by `pkrelay events` and `/api/events`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pkrelay import db
from pkrelay.config import Settings
from pkrelay.envelope import Event


def row_to_event(row: sa.Row) -> Event:
    return Event(
        id=row.id, type=row.type, source=row.source, system_id=row.system_id, entity_id=row.entity_id,
        received_at=row.received_at.replace(tzinfo=row.received_at.tzinfo or UTC),
        data=row.data, entity=row.entity, previous=row.previous,
    )


async def query(
    engine: AsyncEngine,
    *,
    system: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    after_id: str | None = None,
    limit: int = 100,
    newest_first: bool = True,
) -> list[Event]:
    """Events matching the filters; `system` is a configured name or a system UUID."""
    t = db.events
    stmt = sa.select(t)
    if system:
        stmt = stmt.where(sa.or_(t.c.system == system, t.c.system_id == system))
    if event_type:
        stmt = stmt.where(t.c.type == event_type)
    if since:
        stmt = stmt.where(t.c.received_at >= since)
    if after_id:
        stmt = stmt.where(t.c.id > after_id)
    stmt = stmt.order_by(t.c.id.desc() if newest_first else t.c.id.asc()).limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [row_to_event(r) for r in rows]


async def print_events(settings: Settings, *, follow: bool, system: str | None, event_type: str | None) -> int:
    """Print the latest events oldest first, one JSON envelope per line."""
    engine = db.create_engine(settings.database_url)
    try:
        batch = list(reversed(await query(engine, system=system, event_type=event_type, limit=50)))
        last: str | None = None
        while True:
            for event in batch:
                print(msgspec.json.encode(event).decode(), flush=True)
                last = event.id
            if not follow:
                return 0
            await asyncio.sleep(1)
            batch = await query(engine, system=system, event_type=event_type, after_id=last, limit=1000,
                                newest_first=False)
    finally:
        await engine.dispose()
