"""Reading the event log: shared by `pkrelay events` and `/api/events`."""

from __future__ import annotations

import asyncio
import difflib
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pkrelay import db
from pkrelay.config import Settings
from pkrelay.envelope import Event
from pkrelay.pluralkit.dispatch import DATA_MODELS

# What polling emits beyond PluralKit's own dispatch types.
POLL_TYPES = ("UPDATE_GROUP_MEMBERS",)


def row_to_event(row: sa.Row[Any]) -> Event:
    return Event(
        id=row.id, type=row.type, source=row.source, system_id=row.system_id, entity_id=row.entity_id,
        received_at=row.received_at, data=row.data, entity=row.entity, previous=row.previous,
    )


Query = TypeVar("Query", bound=sa.Select[Any])


def matching(stmt: Query, system: str | None, event_type: str | None) -> Query:
    """`stmt` narrowed to events of a system (configured name or UUID) and type, when given."""
    t = db.events
    if system:
        stmt = stmt.where(sa.or_(t.c.system == system, t.c.system_id == system))
    if event_type:
        stmt = stmt.where(t.c.type == event_type)
    return stmt


async def query(
    engine: AsyncEngine,
    *,
    system: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[Event]:
    """The newest events matching the filters, newest first."""
    t = db.events
    stmt = matching(sa.select(t), system, event_type)
    if since:
        stmt = stmt.where(t.c.received_at >= since)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt.order_by(t.c.id.desc()).limit(limit))).all()
    return [row_to_event(r) for r in rows]


async def filter_mistake(engine: AsyncEngine, settings: Settings, system: str | None,
                         event_type: str | None) -> str | None:
    """What is wrong with these filters, when they can match nothing for a plain
    reason (an unknown system, a lower-case or misspelt type); None when they are fine.

    Known means configured, or present in the log (a system removed from the config
    still has its events)."""
    t = db.events
    if system:
        known = {s.name for s in settings.systems} | {s.system_id for s in settings.systems if s.system_id}
        if system not in known:
            async with engine.connect() as conn:
                logged = (await conn.execute(
                    sa.select(t.c.id).where(sa.or_(t.c.system == system, t.c.system_id == system)).limit(1))).first()
            if logged is None:
                names = ", ".join(sorted(s.name for s in settings.systems)) or "none"
                return f"no system {system!r}: configured systems are {names} (a name or a system UUID)"
    if event_type:
        async with engine.connect() as conn:
            seen = set((await conn.execute(sa.select(t.c.type).distinct())).scalars())
        known_types = {*DATA_MODELS, *POLL_TYPES, *seen}
        if event_type not in known_types:
            if event_type.upper() in known_types:
                return f"event types are upper case: --type {event_type.upper()}"
            close = difflib.get_close_matches(event_type.upper(), sorted(known_types), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known types: {', '.join(sorted(known_types))}"
            return f"no event type {event_type!r}{hint}"
    return None


async def missing_ids(engine: AsyncEngine, event_ids: list[str]) -> list[str]:
    """The ids among `event_ids` that are not in the log."""
    async with engine.connect() as conn:
        found = set((await conn.execute(sa.select(db.events.c.id).where(db.events.c.id.in_(event_ids)))).scalars())
    return [i for i in event_ids if i not in found]


# Longer than any transaction that logs events takes between stamping and committing.
FOLLOW_OVERLAP = timedelta(seconds=30)
Position = tuple[datetime, str]


class Logged(NamedTuple):
    """An event, when it reached the log, and the configured name of its system."""

    event: Event
    logged_at: datetime
    system: str | None = None

    @property
    def position(self) -> Position:
        return self.logged_at, self.event.id


def _logged(stmt: sa.Select[Any]) -> sa.Select[Any]:
    t = db.events
    return stmt.where(t.c.logged_at.is_not(None)).order_by(t.c.logged_at, t.c.id)


async def logged_after(engine: AsyncEngine, position: Position, until: datetime | None,
                       limit: int) -> list[Logged]:
    """At most `limit` events after `position` in log order, logged by `until`: one
    page of a reader catching up."""
    t = db.events
    at, event_id = position
    stmt = _logged(sa.select(t)).where(
        sa.or_(t.c.logged_at > at, sa.and_(t.c.logged_at == at, t.c.id > event_id)))
    if until is not None:
        stmt = stmt.where(t.c.logged_at <= until)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt.limit(limit))).all()
    return [Logged(row_to_event(r), r.logged_at, r.system) for r in rows]


async def logged_ids(engine: AsyncEngine, since: datetime | None) -> dict[str, datetime]:
    """The ids logged at or after `since` (all when None), with their log times: no payloads."""
    t = db.events
    stmt = _logged(sa.select(t.c.id, t.c.logged_at))
    if since is not None:
        stmt = stmt.where(t.c.logged_at >= since)
    async with engine.connect() as conn:
        return {r.id: r.logged_at for r in (await conn.execute(stmt)).all()}


async def logged_position(engine: AsyncEngine, event_id: str) -> Position | None:
    """Where an event sits in log order, (logged_at, id): the point a stream resumes after.
    None for an id the log does not hold (or an event not logged yet)."""
    t = db.events
    async with engine.connect() as conn:
        logged_at = (await conn.execute(sa.select(t.c.logged_at).where(t.c.id == event_id))).scalar()
    return (logged_at, event_id) if logged_at is not None else None


async def latest_system_id(conn: AsyncConnection, system: str) -> str | None:
    """The UUID the latest event of this configured system named (for a system
    configured by api_token alone)."""
    t = db.events
    return (await conn.execute(sa.select(t.c.system_id).where(t.c.system == system, t.c.system_id.is_not(None))
                               .order_by(t.c.id.desc()).limit(1))).scalar()


class Follower:
    """Events as they reach the log, each once: `pkrelay events --follow` and the
    receiver's one shared tail behind every /api/stream.

    Not by id: ids sort by arrival at the receiver, and an event whose enrichment
    waited (API down, rate limit) is logged after later ones. We read by the time each
    row was logged, in (logged_at, id) order, re-reading an overlap (FOLLOW_OVERLAP) so
    that rows committed late are not missed, and skip the ids already seen. A row is
    read only once it is `settle` seconds old, so that one transaction which stamped its
    rows before another's but committed after still lands in order. `start` marks what
    is in the log now as seen.

    One statement per `read`: the overlap's rows come back without their payloads
    (those were read before); only a row committed late, behind the newest, costs a
    second statement for its own.
    """

    def __init__(self, engine: AsyncEngine, system: str | None = None, event_type: str | None = None,
                 settle: float = 0.0) -> None:
        self.engine, self.system, self.event_type = engine, system, event_type
        self.settle = timedelta(seconds=settle)
        self.seen: dict[str, datetime] = {}
        self.newest: datetime | None = None

    @property
    def horizon(self) -> datetime | None:
        """The oldest log time a later `read` looks at: what is older never comes again."""
        return self.newest - FOLLOW_OVERLAP if self.newest else None

    async def start(self) -> None:
        async with self.engine.connect() as conn:
            newest = (await conn.execute(sa.select(sa.func.max(db.events.c.logged_at)))).scalar()
        if newest is not None:
            self.newest = newest
            self.seen = await logged_ids(self.engine, self.horizon)

    def mark(self, events: list[Event]) -> None:
        for event in events:
            self.seen.setdefault(event.id, self.newest or datetime.now(UTC))

    async def read(self) -> list[Logged]:
        """The rows not seen yet, in (logged_at, id) order."""
        t = db.events
        since = self.horizon
        fresh = sa.true() if self.newest is None else t.c.logged_at >= self.newest
        heavy = [sa.case((fresh, c), else_=sa.null()).label(c.name) for c in (t.c.data, t.c.entity, t.c.previous)]
        stmt = matching(_logged(sa.select(*(c for c in t.c if c not in (t.c.data, t.c.entity, t.c.previous)),
                                          *heavy, fresh.label("fresh"))), self.system, self.event_type)
        if since is not None:
            stmt = stmt.where(t.c.logged_at >= since)
        if self.settle:
            stmt = stmt.where(t.c.logged_at <= datetime.now(UTC) - self.settle)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        new: list[Logged] = []
        late: list[str] = []
        for row in rows:
            self.newest = max(self.newest or row.logged_at, row.logged_at)
            if row.id not in self.seen:
                self.seen[row.id] = row.logged_at
                new.append(Logged(row_to_event(row), row.logged_at, row.system))
                if not row.fresh:
                    late.append(row.id)  # read without its payload: it comes next
        if late:
            async with self.engine.connect() as conn:
                full = {r.id: row_to_event(r) for r in (await conn.execute(sa.select(t).where(t.c.id.in_(late))))}
            new = [item._replace(event=full.get(item.event.id, item.event)) for item in new]
        if self.newest:
            horizon = self.newest - FOLLOW_OVERLAP
            self.seen = {i: at for i, at in self.seen.items() if at >= horizon}
        return new


async def print_events(settings: Settings, *, follow: bool, system: str | None, event_type: str | None) -> int:
    """Print the latest events oldest first, one JSON envelope per line; then, with
    `follow`, every event logged from then on."""
    engine = db.create_engine(settings.database_url)
    follower = Follower(engine, system, event_type)
    try:
        mistake = await filter_mistake(engine, settings, system, event_type)
        if mistake:
            print(f"pkrelay events: {mistake}", file=sys.stderr)
            return 2
        if follow:
            await follower.start()
        batch = list(reversed(await query(engine, system=system, event_type=event_type, limit=50)))
        while True:
            for event in batch:
                print(msgspec.json.encode(event).decode(), flush=True)
            if not follow:
                return 0
            follower.mark(batch)
            await asyncio.sleep(1)
            batch = [logged.event for logged in await follower.read()]
    finally:
        await engine.dispose()
