"""The `deliveries` table: one row per (event, sink), from plan to settlement.

Rows are planned in the transaction that logs the event, so a worker killed between
logging and enqueuing loses nothing: whatever is still pending is enqueued again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pkrelay import db, queue
from pkrelay.config import DeliveryConfig, Sink
from pkrelay.envelope import Event
from pkrelay.retry import Backoff
from pkrelay.store.eventlog import row_to_event

DELIVER_JOB = "deliver"
# Deliveries one deliver job makes at once, its own included.
BATCH = 50
State = Literal["pending", "dead", "delivered", "skipped"]


@dataclass(frozen=True)
class RetryPolicy(Backoff):
    """Delivery retries: first after 2.5-5 s (well within the contract's 2 minutes),
    doubling to an hour, for `window` seconds from the first attempt (the contract says
    at least 24 h); then the delivery is dead-lettered. `[delivery]` in the config."""

    base: float = 5.0
    cap: float = 3600.0
    window: float = 24 * 3600.0

    @classmethod
    def of(cls, config: DeliveryConfig) -> RetryPolicy:
        return cls(base=config.retry_first_s, cap=config.retry_max_s, window=config.retry_window_h * 3600)


@dataclass(frozen=True)
class Pending:
    """A delivery still to make, with its event."""

    event: Event
    system: str
    attempts: int
    first_attempt_at: datetime | None


def job_id(event_id: str, sink: str) -> str:
    return f"deliver:{event_id}:{sink}"


def wanted(event_type: str, system: str, sinks: list[Sink]) -> list[str]:
    """The keys of the sinks that want this event."""
    return [s.key for s in sinks if s.wants(event_type, system)]


async def plan(conn: AsyncConnection, event_id: str, event_type: str, system: str, sinks: list[Sink]) -> None:
    """Inside the logging transaction: a pending delivery for every sink that wants the event."""
    await plan_all(conn, [(event_id, event_type)], system, sinks)


async def plan_all(conn: AsyncConnection, events: list[tuple[str, str]], system: str, sinks: list[Sink]) -> None:
    """`plan` for (event id, type) of one system, in one statement."""
    rows = [{"event_id": event_id, "sink": key, "status": "pending", "attempts": 0}
            for event_id, event_type in events for key in wanted(event_type, system, sinks)]
    if rows:
        await conn.execute(db.insert_ignoring_duplicates(conn, db.deliveries), rows)


async def enqueue(redis: Redis, pending: list[tuple[str, str]]) -> int:
    """Enqueue a deliver job for each (event id, sink) in one round trip, unless that
    delivery's job is already queued; returns how many were new.

    A sink's deliveries go in runs of `BATCH`: the first one's job is queued and does
    the others' work with its own (each still has its job, held for it).
    """
    by_sink: dict[str, list[str]] = {}
    for event_id, sink in pending:
        by_sink.setdefault(sink, []).append(event_id)
    jobs: list[queue.Job] = []
    for sink, event_ids in by_sink.items():
        for start in range(0, len(event_ids), BATCH):
            lead, *rest = event_ids[start:start + BATCH]
            leader = job_id(lead, sink)
            jobs.append(queue.Job(leader, (lead, sink, rest) if rest else (lead, sink)))
            jobs += [queue.Job(job_id(e, sink), (e, sink), holder=leader) for e in rest]
    return await queue.enqueue_unique(redis, DELIVER_JOB, jobs, queue.JOB_EXPIRY_MS)


async def enqueue_pending(redis: Redis, conn: AsyncConnection, event_ids: list[str]) -> int:
    """Enqueue a deliver job for every pending delivery of these events; returns how
    many deliveries are pending."""
    t = db.deliveries
    rows = (await conn.execute(
        sa.select(t.c.event_id, t.c.sink).where(t.c.event_id.in_(event_ids), t.c.status == "pending")
    )).all()
    await enqueue(redis, [(row.event_id, row.sink) for row in rows])
    return len(rows)


async def load(engine: AsyncEngine, sink: str, event_ids: list[str]) -> list[Pending]:
    """These events' deliveries to this sink that are still pending (a rerun after
    settling finds nothing), in event order."""
    e, d = db.events, db.deliveries
    async with engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(e, d.c.attempts.label("delivery_attempts"), d.c.first_attempt_at)
            .join(d, d.c.event_id == e.c.id)
            .where(e.c.id.in_(event_ids), d.c.sink == sink, d.c.status == "pending").order_by(e.c.id)
        )).all()
    return [Pending(row_to_event(row), row.system, row.delivery_attempts, row.first_attempt_at) for row in rows]


@dataclass(frozen=True)
class Settlement:
    """What became of one delivery: its new state, and the attempt if one was made."""

    event_id: str
    status: State
    error: str | None
    attempt: dict[str, Any] | None = None  # status_code, error, duration_ms


async def settle(engine: AsyncEngine, sink: str, settlements: list[Settlement],
                 then: Callable[[AsyncConnection], Awaitable[bool]] | None = None) -> bool:
    """Record the attempts and the deliveries' new states, and do `then` (the sink's
    health), in one transaction; returns what `then` returned (False without one)."""
    if not settlements:
        return False
    now = datetime.now(UTC)
    d = db.deliveries
    attempts, rows = [], []
    for s in settlements:
        # A sink's answer may hold a NUL byte, which PostgreSQL's text refuses.
        error = s.error.replace("\x00", "\ufffd") if s.error is not None else None
        if s.attempt is not None:
            attempts.append({**s.attempt, "error": error, "event_id": s.event_id, "sink": sink, "at": now})
        rows.append({"e": s.event_id, "b_status": s.status, "b_error": error,
                     "b_delivered": now if s.status == "delivered" else None,
                     "tried": int(s.attempt is not None), "tried_at": now if s.attempt is not None else None})
    tried_at = sa.bindparam("tried_at", type_=db.UTCDateTime)
    update = d.update().where(d.c.event_id == sa.bindparam("e"), d.c.sink == sink).values(
        status=sa.bindparam("b_status"), last_error=sa.bindparam("b_error"),
        delivered_at=sa.func.coalesce(sa.bindparam("b_delivered", type_=db.UTCDateTime), d.c.delivered_at),
        attempts=d.c.attempts + sa.bindparam("tried"),
        last_attempt_at=sa.func.coalesce(tried_at, d.c.last_attempt_at),
        first_attempt_at=sa.func.coalesce(d.c.first_attempt_at, tried_at))
    async with engine.begin() as conn:
        if attempts:
            await conn.execute(db.delivery_attempts.insert(), attempts)
        await conn.execute(update, rows)
        return await then(conn) if then is not None else False


_REOPENED = {"status": "pending", "attempts": 0, "first_attempt_at": None, "last_error": None}


async def reopen_dead(conn: AsyncConnection, sink: str | None = None, event_ids: list[str] | None = None) -> list[str]:
    """Make dead letters (of one sink, of these events) pending again with a fresh retry
    window; returns their event ids."""
    d = db.deliveries
    where = d.c.status == "dead"
    if sink is not None:
        where = sa.and_(where, d.c.sink == sink)
    if event_ids is not None:
        where = sa.and_(where, d.c.event_id.in_(event_ids))
    ids = list((await conn.execute(sa.select(d.c.event_id).where(where).distinct())).scalars())
    await conn.execute(d.update().where(where).values(**_REOPENED))
    return ids


async def replay(engine: AsyncEngine, redis: Redis, sinks: list[Sink], *, event_ids: list[str] | None = None,
                 since: datetime | None = None, dead: bool = False) -> int:
    """Deliver stored events again, with their ids; returns how many deliveries were queued.

    Events named or `since` go again to every sink that wants them now; `dead` reopens
    the dead-lettered deliveries. Either way the retry window starts afresh; the history
    (every attempt, in `delivery_attempts`) stays, and `listing` shows it whole.
    """
    e, d = db.events, db.deliveries
    async with engine.begin() as conn:
        if dead:
            ids = await reopen_dead(conn)
        else:
            query = sa.select(e.c.id, e.c.type, e.c.system)
            query = query.where(e.c.id.in_(event_ids)) if event_ids else query.where(e.c.received_at >= since)
            events = (await conn.execute(query)).all()
            ids = [row.id for row in events]
            for row in events:
                await conn.execute(d.update().where(d.c.event_id == row.id,
                                                    d.c.sink.in_(wanted(row.type, row.system, sinks)))
                                   .values(**_REOPENED))
                await plan(conn, row.id, row.type, row.system, sinks)
    async with engine.connect() as conn:
        return await enqueue_pending(redis, conn, ids)


def _earliest(*times: datetime | None) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


class Delivery(msgspec.Struct, kw_only=True):
    """One delivery as operators see it (`/api/deliveries`, `pkrelay deliveries`): every
    attempt ever made (replays included) and the first of them."""

    event_id: str
    type: str
    system: str | None
    system_id: str | None
    sink: str
    state: str
    attempts: int
    last_error: str | None
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None


async def listing(engine: AsyncEngine, state: State = "dead", sink: str | None = None,
                  limit: int = 100) -> list[Delivery]:
    """Deliveries in this state (of this sink, by its name or key), newest event first."""
    e, d, a = db.events, db.deliveries, db.delivery_attempts
    # The row counts attempts within its retry window (a replay starts one afresh); the
    # attempts table keeps every one, which is the delivery's history.
    mine = sa.and_(a.c.event_id == d.c.event_id, a.c.sink == d.c.sink)
    tried = sa.select(sa.func.count()).where(mine).scalar_subquery().label("tried")
    first = sa.select(sa.func.min(a.c.at)).where(mine).scalar_subquery().label("first_tried_at")
    query = (sa.select(d, e.c.type, e.c.system, e.c.system_id, tried, first).join(e, e.c.id == d.c.event_id)
             .where(d.c.status == state))
    if sink:
        query = query.where(d.c.sink == sink)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(d.c.event_id.desc(), d.c.sink).limit(limit))).all()
    return [Delivery(event_id=r.event_id, type=r.type, system=r.system, system_id=r.system_id, sink=r.sink,
                     state=r.status, attempts=max(r.attempts, r.tried or 0), last_error=r.last_error,
                     first_attempt_at=_earliest(r.first_tried_at, r.first_attempt_at),
                     last_attempt_at=r.last_attempt_at,
                     delivered_at=r.delivered_at) for r in rows]
