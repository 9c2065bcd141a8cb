"""Delivery: one arq job per (event, sink), so a slow or dead sink delays nobody else.

Each (event, sink) pair has a row in `deliveries`, written in the same transaction as
the event, so a worker killed between logging and enqueuing loses nothing: the
ingest job's rerun enqueues what is still pending. Failures retry with exponential
backoff and jitter (arq's Retry) until `window` has passed since the first attempt,
then the delivery is dead-lettered: kept, visible, replayable.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import sqlalchemy as sa
from arq import Retry
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncConnection

from pkrelay import db
from pkrelay.config import MqttSink, Sink, WebhookSink
from pkrelay.envelope import Event
from pkrelay.eventlog import row_to_event
from pkrelay.pluralkit import errors
from workers import privacy, state, webhook
from workers.api import client_for
from workers.metrics import DEAD_LETTERED, DELIVERIES, DELIVERY_LATENCY
from workers.mqtt import MqttConnection, MqttUnavailable

log = logging.getLogger("pkrelay.deliver")
DELIVER_JOB = "deliver"
FRONT_TYPES = frozenset({"CREATE_SWITCH", "UPDATE_SWITCH", "DELETE_SWITCH", "DELETE_ALL_SWITCHES"})


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 5.0  # first retry after 2.5-5 s: well within SPEC's 2 minutes
    cap: float = 3600.0
    window: float = 24 * 3600.0  # SPEC: retried for at least 24 h, then dead-lettered

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def job_id(event_id: str, sink: str) -> str:
    return f"deliver:{event_id}:{sink}"


async def plan(conn: AsyncConnection, event_id: str, event_type: str, system: str, sinks: list[Sink]) -> None:
    """Inside the logging transaction: a pending delivery for every sink that wants the event."""
    rows = [{"event_id": event_id, "sink": s.key, "status": "pending", "attempts": 0}
            for s in sinks if s.wants(event_type, system)]
    if rows:
        await conn.execute(db.insert_ignoring_duplicates(conn, db.deliveries), rows)


async def enqueue_pending(redis: ArqRedis, conn: AsyncConnection, event_ids: list[str]) -> int:
    """Enqueue a deliver job for every pending delivery of these events."""
    t = db.deliveries
    rows = (await conn.execute(
        sa.select(t.c.event_id, t.c.sink).where(t.c.event_id.in_(event_ids), t.c.status == "pending")
    )).all()
    for row in rows:
        await redis.enqueue_job(DELIVER_JOB, row.event_id, row.sink, _job_id=job_id(row.event_id, row.sink))
    return len(rows)


async def deliver(ctx: dict[str, Any], event_id: str, sink_key: str) -> str:
    """Attempt one delivery; returns the outcome, raises Retry to try again later."""
    engine = ctx["engine"]
    sink = next((s for s in ctx["live"].current.sinks if s.key == sink_key), None)
    e, d = db.events, db.deliveries
    async with engine.connect() as conn:
        row = (await conn.execute(
            sa.select(e, d.c.status.label("delivery_status"), d.c.attempts.label("delivery_attempts"),
                      d.c.first_attempt_at)
            .join(d, d.c.event_id == e.c.id).where(e.c.id == event_id, d.c.sink == sink_key)
        )).first()
    if row is None or row.delivery_status != "pending":
        return "nothing to do"
    event = row_to_event(row)
    if sink is None:
        await _settle(engine, event_id, sink_key, "dead", "the sink is no longer configured")
        return "dead"
    envelope: dict[str, Any] | None = msgspec.to_builtins(event)
    if sink.public_only:
        async with engine.connect() as conn:
            stored = await state.get(conn, "system", event.system_id) if event.system_id else None
        envelope = privacy.strip(envelope, system=stored.data if stored else None)
    if envelope is None:
        await _settle(engine, event_id, sink_key, "skipped", "nothing public in this event")
        DELIVERIES.labels(sink_key, "skipped").inc()
        return "skipped"
    body = msgspec.json.encode(envelope)
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        if isinstance(sink, WebhookSink):
            status_code = await webhook.post(ctx["http"], sink.url, sink.secret.reveal(), event_id, body)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        else:
            await _publish_mqtt(ctx, sink, row.system, event, body)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except (MqttUnavailable, errors.PluralKitError) as exc:
        error = str(exc)
    attempt = {"status_code": status_code, "error": error, "duration_ms": (time.perf_counter() - started) * 1000}
    now = datetime.now(UTC)
    attempts = row.delivery_attempts + 1
    first = row.first_attempt_at.replace(tzinfo=UTC) if row.first_attempt_at else now
    policy: RetryPolicy = ctx["retry_policy"]
    if error is None:
        outcome = "delivered"
        DELIVERY_LATENCY.labels(sink_key).observe((now - event.received_at).total_seconds())
    elif now - first >= timedelta(seconds=policy.window):
        outcome = "dead"
        DEAD_LETTERED.labels(sink_key).inc()
        log.warning("dead-lettered %s for sink %s after %d attempts: %s", event_id, sink_key, attempts, error)
    else:
        outcome = "failed"
    await _settle(engine, event_id, sink_key, "pending" if outcome == "failed" else outcome, error, attempt)
    DELIVERIES.labels(sink_key, outcome).inc()
    if outcome != "failed":
        return outcome
    delay = policy.delay(attempts)
    log.info("delivery of %s to %s failed (%s), attempt %d, retrying in %.1f s",
             event_id, sink_key, error, attempts, delay)
    raise Retry(defer=delay)


async def _publish_mqtt(ctx: dict[str, Any], sink: MqttSink, system_name: str, event: Event, body: bytes) -> None:
    """The event on its topic; after a switch, the retained front state too."""
    if not event.system_id:
        raise MqttUnavailable("the event names no system, so it has no topic")
    engine = ctx["engine"]
    async with engine.connect() as conn:
        system = await state.get(conn, "system", event.system_id)
        fronters = await state.get(conn, "fronters", event.system_id) if event.type in FRONT_TYPES else None
    if system is None:  # the topic needs the short id: one call, then stored
        configured = next((s for s in ctx["live"].current.systems if s.name == system_name), None)
        if configured is None:
            raise MqttUnavailable(f"system {system_name} is no longer configured")
        fetched = msgspec.to_builtins(await client_for(ctx, configured).system(event.system_id))
        async with engine.begin() as conn:
            await state.put(conn, "system", event.system_id, event.system_id, fetched, datetime.now(UTC))
        system = state.Stored(fetched, None)
    connections: dict[str, MqttConnection] = ctx["mqtt"]
    connection = connections.setdefault(sink.key, MqttConnection(sink))
    short_id = str(system.data["id"])
    await connection.publish_event(short_id, event.type, body)
    if event.type in FRONT_TYPES:
        current = fronters.data if fronters else {"members": []}
        if sink.public_only:
            current = privacy.public_switch(current, system.data) or {"members": []}
        await connection.publish_front(short_id, [m for m in current.get("members", []) if isinstance(m, dict)])


async def _settle(engine: Any, event_id: str, sink: str, status: str, error: str | None,
                  attempt: dict[str, Any] | None = None) -> None:
    """Record the attempt (if one was made) and the delivery's new state, in one transaction."""
    now = datetime.now(UTC)
    d = db.deliveries
    values: dict[str, Any] = {"status": status, "last_error": error}
    if status == "delivered":
        values["delivered_at"] = now
    async with engine.begin() as conn:
        if attempt is not None:
            await conn.execute(db.delivery_attempts.insert().values(event_id=event_id, sink=sink, at=now, **attempt))
            values |= {"attempts": d.c.attempts + 1, "last_attempt_at": now,
                       "first_attempt_at": sa.func.coalesce(d.c.first_attempt_at, now)}
        await conn.execute(d.update().where(d.c.event_id == event_id, d.c.sink == sink).values(**values))


async def replay(engine: Any, redis: ArqRedis, sinks: list[Sink], *, event_ids: list[str] | None = None,
                 since: datetime | None = None, dead: bool = False) -> int:
    """Deliver stored events again, with their ids; returns how many deliveries were queued.

    Events named or `since` go again to every sink that wants them now; `dead` reopens
    the dead-lettered deliveries. Either way the retry window starts afresh.
    """
    e, d = db.events, db.deliveries
    reopen = {"status": "pending", "attempts": 0, "first_attempt_at": None, "last_error": None}
    async with engine.begin() as conn:
        if dead:
            ids = list((await conn.execute(sa.select(d.c.event_id).where(d.c.status == "dead").distinct())).scalars())
            await conn.execute(d.update().where(d.c.status == "dead").values(**reopen))
        else:
            query = sa.select(e.c.id, e.c.type, e.c.system)
            query = query.where(e.c.id.in_(event_ids)) if event_ids else query.where(e.c.received_at >= since)
            events = (await conn.execute(query)).all()
            ids = [row.id for row in events]
            for row in events:
                wanted = [s.key for s in sinks if s.wants(row.type, row.system)]
                await conn.execute(d.update().where(d.c.event_id == row.id, d.c.sink.in_(wanted)).values(**reopen))
                await plan(conn, row.id, row.type, row.system, sinks)
    async with engine.connect() as conn:
        return await enqueue_pending(redis, conn, ids)
