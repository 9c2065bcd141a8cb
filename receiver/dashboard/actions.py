"""What the dashboard's buttons do: replay dead letters of one sink, send a test event.

Delivery itself stays the workers' job: we reopen or plan `deliveries` rows and
enqueue the workers' own deliver jobs with `workers.deliveries.enqueue_pending`.
(`workers.deliveries.replay` reopens the dead letters of every sink at once; the
dashboard replays per sink, so it does its own reopening.)
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from arq.connections import ArqRedis

from pkrelay import db, eventlog
from pkrelay.config import Sink
from pkrelay.envelope import new_event_id
from receiver.relay import Relay
from workers.deliveries import enqueue_pending

TEST_TYPE = "PKRELAY_TEST"
TEST_SOURCE = "test"


async def _enqueue(relay: Relay, event_ids: list[str]) -> int:
    arq = ArqRedis(relay.redis.connection_pool)  # the receiver's pool, arq's job layout
    async with relay.engine.connect() as conn:
        return await enqueue_pending(arq, conn, event_ids)


async def replay_dead(relay: Relay, sink: Sink, event_ids: list[str] | None) -> int:
    """Deliver the named dead letters of `sink` (all of them when None) again, with
    their ids and a fresh retry window; returns how many were queued."""
    d = db.deliveries
    where = sa.and_(d.c.sink == sink.key, d.c.status == "dead")
    if event_ids is not None:
        where = sa.and_(where, d.c.event_id.in_(event_ids))
    async with relay.engine.begin() as conn:
        ids = list((await conn.execute(sa.select(d.c.event_id).where(where))).scalars())
        await conn.execute(d.update().where(where).values(
            status="pending", attempts=0, first_attempt_at=None, last_error=None))
    return await _enqueue(relay, ids) if ids else 0


async def send_test(relay: Relay, sink: Sink) -> str:
    """Log a synthetic PKRELAY_TEST event (source "test") planned for this one sink,
    and queue its delivery; returns its id.

    It names the first system the sink takes, so an MQTT sink has a topic for it.
    """
    settings = relay.live.current
    system = next((s for s in settings.systems if sink.systems is None or s.name in sink.systems), None)
    event_id = new_event_id()
    now = datetime.now(UTC)
    async with relay.engine.begin() as conn:
        system_id = system.system_id if system else None
        if system and not system_id:
            system_id = await eventlog.latest_system_id(conn, system.name)
        await conn.execute(db.events.insert().values(
            id=event_id, type=TEST_TYPE, source=TEST_SOURCE, system=system.name if system else None,
            system_id=system_id, entity_id=None, received_at=now, logged_at=now,
            data={"message": "a test event from the pkrelay dashboard"}, entity=None, previous=None))
        await conn.execute(db.deliveries.insert().values(event_id=event_id, sink=sink.key, status="pending",
                                                         attempts=0))
    await _enqueue(relay, [event_id])
    return event_id
