"""What the dashboard's buttons do: replay dead letters of one sink, send a test event,
resume a disabled sink.

Delivery itself stays the workers' job: we reopen or plan `deliveries` rows and
enqueue the workers' own deliver jobs (`pkrelay.store.deliveries`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pkrelay import db
from pkrelay.config import Sink
from pkrelay.envelope import new_event_id
from pkrelay.store import deliveries, eventlog, sinks
from receiver.relay import Relay

TEST_TYPE = "PKRELAY_TEST"
TEST_SOURCE = "test"


async def _enqueue(relay: Relay, event_ids: list[str]) -> int:
    async with relay.engine.connect() as conn:
        return await deliveries.enqueue_pending(relay.redis, conn, event_ids)


async def replay_dead(relay: Relay, sink: Sink, event_ids: list[str] | None) -> int:
    """Deliver the named dead letters of `sink` (all of them when None) again, with
    their ids and a fresh retry window; returns how many were queued."""
    async with relay.engine.begin() as conn:
        ids = await deliveries.reopen_dead(conn, sink.key, event_ids)
    return await _enqueue(relay, ids) if ids else 0


async def enable_sink(relay: Relay, sink: Sink) -> int:
    """Resume a disabled sink; how many held deliveries were queued."""
    return await sinks.enable(relay.engine, relay.redis, sink.key)


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
