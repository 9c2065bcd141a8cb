"""The state store: the last known version of each entity of each system."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from pkrelay import db

t = db.state


@dataclass
class Stored:
    data: dict[str, Any]
    fetched_at: datetime | None


async def get(conn: AsyncConnection, kind: str, key: str) -> Stored | None:
    row = (await conn.execute(sa.select(t.c.data, t.c.fetched_at).where(t.c.kind == kind, t.c.key == key))).first()
    if row is None:
        return None
    fetched = row.fetched_at.replace(tzinfo=UTC) if row.fetched_at and row.fetched_at.tzinfo is None else row.fetched_at
    return Stored(row.data, fetched)


async def get_many(conn: AsyncConnection, kind: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    rows = (await conn.execute(sa.select(t.c.key, t.c.data).where(t.c.kind == kind, t.c.key.in_(keys)))).all()
    return {r.key: r.data for r in rows}


async def put(conn: AsyncConnection, kind: str, key: str, system_id: str, data: dict[str, Any],
              fetched_at: datetime | None) -> None:
    """Insert or replace; `fetched_at` None keeps the time the API last confirmed it."""
    now = datetime.now(UTC)
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(t).values(kind=kind, key=key, system_id=system_id, data=data, fetched_at=fetched_at,
                                    updated_at=now)
    update: dict[str, Any] = {"data": stmt.excluded.data, "updated_at": now, "system_id": system_id}
    if fetched_at is not None:
        update["fetched_at"] = fetched_at
    await conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.kind, t.c.key], set_=update))


async def delete(conn: AsyncConnection, kind: str, key: str) -> None:
    await conn.execute(t.delete().where(t.c.kind == kind, t.c.key == key))


async def delete_kind(conn: AsyncConnection, system_id: str, kind: str) -> None:
    await conn.execute(t.delete().where(t.c.system_id == system_id, t.c.kind == kind))


async def all_of(conn: AsyncConnection, system_id: str, kind: str) -> dict[str, dict[str, Any]]:
    rows = (await conn.execute(sa.select(t.c.key, t.c.data).where(t.c.system_id == system_id, t.c.kind == kind))).all()
    return {r.key: r.data for r in rows}
