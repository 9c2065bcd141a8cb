"""Delivery: one arq job per (event, sink), so a slow or dead sink delays nobody else.

The job plans what this sink may see, sends it through the sink's `Sender`, and
settles the row. Failures retry with backoff and jitter (arq's Retry) until the
policy's window has passed since the first attempt; then the delivery is
dead-lettered: kept, visible, replayable.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from arq import Retry

from workers import deliveries, privacy, state
from workers.metrics import DEAD_LETTERED, DELIVERIES, DELIVERY_LATENCY
from workers.outage import survives_outages
from workers.resources import Resources
from workers.sinks import DeliveryFailed, Outgoing, sender_for
from workers.state import Kind

log = logging.getLogger("pkrelay.deliver")


@survives_outages
async def deliver(ctx: dict[str, Any], event_id: str, sink_key: str) -> str:
    """Attempt one delivery; returns the outcome, raises Retry to try again later."""
    res = Resources.of(ctx)
    pending = await deliveries.load(res.engine, event_id, sink_key)
    if pending is None:
        return "nothing to do"
    sink = res.settings.sink(sink_key)
    if sink is None:
        await deliveries.settle(res.engine, event_id, sink_key, "dead", "the sink is no longer configured")
        return "dead"
    event = pending.event
    envelope: dict[str, Any] | None = msgspec.to_builtins(event)
    if sink.public_only and envelope is not None:
        async with res.engine.connect() as conn:
            stored = await state.get(conn, Kind.SYSTEM, event.system_id) if event.system_id else None
        envelope = privacy.strip(envelope, system=stored.data if stored else None)
    if envelope is None:
        await deliveries.settle(res.engine, event_id, sink_key, "skipped", "nothing public in this event")
        DELIVERIES.labels(sink_key, "skipped").inc()
        return "skipped"
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        status_code = await sender_for(sink, res).send(Outgoing(event, msgspec.json.encode(envelope), pending.system))
    except DeliveryFailed as exc:
        status_code, error = exc.status, exc.reason
    except Exception as exc:  # a failure nobody foresaw is still a failure: recorded, retried, dead-lettered
        log.exception("delivery of %s to %s raised", event_id, sink_key)
        error = f"{type(exc).__name__}: {exc}"
    attempt = {"status_code": status_code, "error": error, "duration_ms": (time.perf_counter() - started) * 1000}
    now = datetime.now(UTC)
    attempts = pending.attempts + 1
    first = pending.first_attempt_at or now
    policy = res.retry_policy
    if error is None:
        outcome = "delivered"
        DELIVERY_LATENCY.labels(sink_key).observe((now - event.received_at).total_seconds())
    elif now - first >= timedelta(seconds=policy.window):
        outcome = "dead"
        DEAD_LETTERED.labels(sink_key).inc()
        log.warning("dead-lettered %s for sink %s after %d attempts: %s", event_id, sink_key, attempts, error)
    else:
        outcome = "failed"
    await deliveries.settle(res.engine, event_id, sink_key, "pending" if outcome == "failed" else outcome, error,
                            attempt)
    DELIVERIES.labels(sink_key, outcome).inc()
    if outcome != "failed":
        return outcome
    delay = policy.delay(attempts)
    log.warning("delivery of %s to %s failed (%s), attempt %d, retrying in %.1f s",
             event_id, sink_key, error, attempts, delay)
    raise Retry(defer=delay)
