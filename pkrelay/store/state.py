"""The state store: the last known version of each entity of each system.

Everything that changes it says what it does with a `Write`: put an entity, delete
one, or clear a kind (an import or a delete-all replaces what was there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from pkrelay import db

t = db.state


class Kind(StrEnum):
    """What a row holds. System, settings and fronters are keyed by the system's
    UUID; members, groups and switches by their own UUID."""

    SYSTEM = "system"
    SETTINGS = "settings"
    FRONTERS = "fronters"
    MEMBER = "member"
    GROUP = "group"
    SWITCH = "switch"


@dataclass(frozen=True)
class Put:
    """Insert or replace; `fetched_at` None keeps the time the API last confirmed it."""

    kind: Kind
    key: str
    data: dict[str, Any]
    fetched_at: datetime | None = None


@dataclass(frozen=True)
class Delete:
    kind: Kind
    key: str


@dataclass(frozen=True)
class Clear:
    """Every entity of this kind of the system."""

    kind: Kind


Write = Put | Delete | Clear


@dataclass
class Stored:
    data: dict[str, Any]
    fetched_at: datetime | None


# Every read and write names the system it is for, and touches only that system's rows:
# one system's dispatch that names another's member, group or switch reads and writes
# nothing of the other's.


async def get(conn: AsyncConnection, system_id: str, kind: Kind, key: str) -> Stored | None:
    row = (await conn.execute(sa.select(t.c.data, t.c.fetched_at).where(
        t.c.kind == kind, t.c.key == key, t.c.system_id == system_id))).first()
    return None if row is None else Stored(row.data, row.fetched_at)


async def get_many(conn: AsyncConnection, system_id: str, kind: Kind, keys: list[str]) -> dict[str, dict[str, Any]]:
    rows = (await conn.execute(sa.select(t.c.key, t.c.data).where(
        t.c.kind == kind, t.c.key.in_(keys), t.c.system_id == system_id))).all()
    return {r.key: r.data for r in rows}


async def all_of(conn: AsyncConnection, system_id: str, kind: Kind) -> dict[str, dict[str, Any]]:
    rows = (await conn.execute(sa.select(t.c.key, t.c.data).where(t.c.system_id == system_id, t.c.kind == kind))).all()
    return {r.key: r.data for r in rows}


@dataclass
class Snapshot:
    """Everything stored of one system: confirmed rows by kind and key, and the keys of
    rows only a dispatch ever described (a create the API did not show yet)."""

    rows: dict[Kind, dict[str, dict[str, Any]]] = field(default_factory=lambda: {kind: {} for kind in Kind})
    unconfirmed: set[tuple[Kind, str]] = field(default_factory=set)

    def moved_since(self, before: Snapshot) -> set[tuple[Kind, str]]:
        """The entities written between `before` and this snapshot: changed, added or removed."""
        moved = self.unconfirmed ^ before.unconfirmed
        for kind in Kind:
            now, then = self.rows[kind], before.rows[kind]
            moved |= {(kind, key) for key in now.keys() | then.keys() if now.get(key) != then.get(key)}
        return moved


async def snapshot(conn: AsyncConnection, system_id: str) -> Snapshot:
    """One read of everything stored of a system."""
    out = Snapshot()
    rows = (await conn.execute(sa.select(t.c.kind, t.c.key, t.c.data, t.c.fetched_at)
                               .where(t.c.system_id == system_id))).all()
    for row in rows:
        if row.fetched_at is None:
            out.unconfirmed.add((Kind(row.kind), row.key))
        else:
            out.rows[Kind(row.kind)][row.key] = row.data
    return out


async def _put(conn: AsyncConnection, write: Put, system_id: str) -> None:
    now = datetime.now(UTC)
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(t).values(kind=write.kind, key=write.key, system_id=system_id, data=write.data,
                                    fetched_at=write.fetched_at, updated_at=now)
    update: dict[str, Any] = {"data": stmt.excluded.data, "updated_at": now}
    if write.fetched_at is not None:
        update["fetched_at"] = write.fetched_at
    await conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.system_id, t.c.kind, t.c.key], set_=update))


def coalesced(writes: list[Write]) -> list[Write]:
    """The same end state in fewer statements: of a row's writes only the last is
    made, a Put keeping the `fetched_at` the upserts one by one would have left, and
    what a Clear wipes is not written first (ten edits of a member in one batch are one
    upsert, not ten)."""
    out: list[Write] = []
    run: dict[tuple[Kind, str], Put | Delete] = {}
    for write in writes:
        if isinstance(write, Clear):
            run = {row: w for row, w in run.items() if row[0] != write.kind}
            out.append(write)
            continue
        before = run.pop((write.kind, write.key), None)
        if isinstance(write, Put) and write.fetched_at is None and isinstance(before, Put):
            write = Put(write.kind, write.key, write.data, before.fetched_at)
        run[(write.kind, write.key)] = write
    return out + list(run.values())


async def apply(conn: AsyncConnection, system_id: str, writes: list[Write]) -> None:
    """Carry out writes of one system, in order, inside the caller's transaction."""
    for write in coalesced(writes):
        match write:
            case Put():
                await _put(conn, write, system_id)
            case Delete(kind, key):
                await conn.execute(t.delete().where(t.c.kind == kind, t.c.key == key, t.c.system_id == system_id))
            case Clear(kind):
                await conn.execute(t.delete().where(t.c.system_id == system_id, t.c.kind == kind))


class View:
    """The store as it will be once a batch's pending writes are applied.

    Lets a worker enrich a run of events one after another (each seeing the changes
    of those before it) and then write them all in one short transaction.
    """

    def __init__(self, conn: AsyncConnection, system_id: str) -> None:
        self.conn = conn
        self.system_id = system_id
        self._overlay: dict[tuple[Kind, str], Stored | None] = {}
        self._cleared: set[Kind] = set()

    async def get(self, kind: Kind, key: str) -> Stored | None:
        if (kind, key) in self._overlay:
            return self._overlay[(kind, key)]
        return None if kind in self._cleared else await get(self.conn, self.system_id, kind, key)

    async def get_many(self, kind: Kind, keys: list[str]) -> dict[str, dict[str, Any]]:
        found = {} if kind in self._cleared else await get_many(self.conn, self.system_id, kind, keys)
        for key in keys:
            if (kind, key) in self._overlay:
                stored = self._overlay[(kind, key)]
                if stored is None:
                    found.pop(key, None)
                else:
                    found[key] = stored.data
        return found

    async def record(self, writes: list[Write]) -> None:
        for write in writes:
            match write:
                case Put(kind, key, data, fetched_at):
                    before = await self.get(kind, key)
                    self._overlay[(kind, key)] = Stored(data, fetched_at or (before.fetched_at if before else None))
                case Delete(kind, key):
                    self._overlay[(kind, key)] = None
                case Clear(kind):
                    self._cleared.add(kind)
                    self._overlay = {k: v for k, v in self._overlay.items() if k[0] != kind}
