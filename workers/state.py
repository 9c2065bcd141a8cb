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


Write = tuple[str, str, dict[str, Any] | None, datetime | None]  # kind, key ("*": all), data (None: delete)


class View:
    """The store as it will be once a batch's pending writes are applied.

    Lets a worker enrich a run of events one after another (each seeing the changes
    of those before it) and then write them all in one short transaction.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._overlay: dict[tuple[str, str], Stored | None] = {}
        self._cleared: set[str] = set()

    async def get(self, kind: str, key: str) -> Stored | None:
        if (kind, key) in self._overlay:
            return self._overlay[(kind, key)]
        return None if kind in self._cleared else await get(self.conn, kind, key)

    async def get_many(self, kind: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        found = {} if kind in self._cleared else await get_many(self.conn, kind, keys)
        for key in keys:
            if (kind, key) in self._overlay:
                stored = self._overlay[(kind, key)]
                if stored is None:
                    found.pop(key, None)
                else:
                    found[key] = stored.data
        return found

    async def record(self, writes: list[Write]) -> None:
        for kind, key, data, fetched_at in writes:
            if key == "*":
                self._cleared.add(kind)
                self._overlay = {k: v for k, v in self._overlay.items() if k[0] != kind}
            elif data is None:
                self._overlay[(kind, key)] = None
            else:
                before = await self.get(kind, key)
                self._overlay[(kind, key)] = Stored(data, fetched_at or (before.fetched_at if before else None))
