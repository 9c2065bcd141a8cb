"""Delivery: each (event, sink) has its own arq job, so a slow or dead sink delays
nobody else, and a retry, a replay or the sweep addresses one delivery.

Deliveries enqueued together go in runs (`deliveries.enqueue`): the first one's job
takes the others' (held for it) when it starts, sends them all at once and settles
them in one transaction, so a burst costs a worker a few jobs per sink, not one per
event.
Failures retry with backoff and jitter (arq's Retry for the job's own delivery, the
taken job put back, deferred, for the others) until the policy's window has passed
since the first attempt; then the delivery is dead-lettered: kept, visible,
replayable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from arq import Retry

from pkrelay import keys, queue
from pkrelay.config import Sink
from pkrelay.labels import sink_label
from pkrelay.store import deliveries, state
from pkrelay.store.deliveries import Pending, Settlement
from pkrelay.store.state import Kind
from workers import privacy
from workers.metrics import DEAD_LETTERED, DELIVERIES, DELIVERY_LATENCY
from workers.outage import REDIS_DOWN, survives_outages
from workers.resources import Resources
from workers.senders import sender_for
from workers.sinks import DeliveryFailed, Outgoing

log = logging.getLogger("pkrelay.deliver")


@survives_outages
async def deliver(ctx: dict[str, Any], event_id: str, sink_key: str, followers: list[str] | None = None) -> str:
    """Attempt this delivery, and those of `followers` (events whose deliveries to this
    sink were enqueued with it) still waiting; returns the outcome of this one, raises
    Retry to try it again later."""
    res = Resources.of(ctx)
    sink = res.settings.sink(sink_key)
    own = deliveries.job_id(event_id, sink_key)
    jobs = {deliveries.job_id(e, sink_key): e for e in followers or ()}
    taken = await queue.take_over(res.redis, own, list(jobs))
    try:
        batch = await deliveries.load(res.engine, sink_key, [event_id, *(jobs[j] for j in taken)])
        if sink is None:
            settlements = [Settlement(p.event.id, "dead", "the sink is no longer configured") for p in batch]
        else:
            settlements = list(await asyncio.gather(*(_attempt(res, sink, p) for p in batch)))
        await deliveries.settle(res.engine, sink_key, settlements)
    except BaseException:
        await queue.release(res.redis, retry=dict.fromkeys(taken, 0.0))  # not done: their jobs run again
        raise
    retry_in: dict[str, float] = {}  # job id -> seconds
    outcome = "nothing to do"
    for pending, settled in zip(batch, settlements, strict=True):
        job = deliveries.job_id(pending.event.id, sink_key)
        if settled.status == "pending":
            retry_in[job] = res.retry_policy.delay(pending.attempts + 1)
        if pending.event.id == event_id:
            outcome = "failed" if settled.status == "pending" else settled.status
    await queue.release(res.redis, done=[j for j in taken if j not in retry_in],
                        retry={j: delay for j, delay in retry_in.items() if j != own})
    if own in retry_in:
        raise Retry(defer=retry_in[own])
    return outcome


async def _attempt(res: Resources, sink: Sink, pending: Pending) -> Settlement:
    """Send one delivery, or say why not; what became of it."""
    event = pending.event
    label = sink_label(res.settings, sink)  # metrics and logs: never the key, a hash of the URL
    envelope: dict[str, Any] | None = msgspec.to_builtins(event)
    if sink.public_only and envelope is not None:
        async with res.engine.connect() as conn:
            stored = await state.get(conn, event.system_id, Kind.SYSTEM, event.system_id) if event.system_id else None
        envelope = privacy.strip(envelope, system=stored.data if stored else None)
    if envelope is None:
        DELIVERIES.labels(label, "skipped").inc()
        return Settlement(event.id, "skipped", "nothing public in this event")
    status_code: int | None = None
    error: str | None = None
    try:
        async with res.sending(sink.key):
            started = time.perf_counter()
            status_code = await sender_for(sink, res).send(Outgoing(event, msgspec.json.encode(envelope),
                                                                    pending.system))
    except DeliveryFailed as exc:
        status_code, error = exc.status, exc.reason
    except Exception as exc:  # a failure nobody foresaw is still a failure: recorded, retried, dead-lettered
        log.exception("delivery of %s to %s raised", event.id, label)
        error = f"{type(exc).__name__}: {exc}"
    attempt = {"status_code": status_code, "error": error, "duration_ms": (time.perf_counter() - started) * 1000}
    now = datetime.now(UTC)
    attempts = pending.attempts + 1
    first = pending.first_attempt_at or now
    if error is None:
        if await _health_changed(res, sink.key, None):
            log.info("sink %s recovered: %s delivered", label, event.id)
        DELIVERIES.labels(label, "delivered").inc()
        DELIVERY_LATENCY.labels(label).observe((now - event.received_at).total_seconds())
        return Settlement(event.id, "delivered", None, attempt)
    if now - first >= timedelta(seconds=res.retry_policy.window):
        DELIVERIES.labels(label, "dead").inc()
        DEAD_LETTERED.labels(label).inc()
        log.warning("dead-lettered %s for sink %s after %d attempts: %s", event.id, label, attempts, error)
        return Settlement(event.id, "dead", error, attempt)
    DELIVERIES.labels(label, "failed").inc()
    # One WARNING when a sink starts failing, not one per retry; the rest at DEBUG.
    if await _health_changed(res, sink.key, error):
        log.warning("sink %s is failing: delivery of %s: %s; retrying with backoff (said once: the next line is "
                    "when it recovers)", label, event.id, error)
    else:
        log.debug("delivery of %s to %s failed (%s), attempt %d", event.id, label, error, attempts)
    return Settlement(event.id, "pending", error, attempt)


async def _health_changed(res: Resources, sink_key: str, error: str | None) -> bool:
    """Record that the sink fails (`error`) or works (None); whether that is news. Redis
    away: news (a line too many beats a failure unsaid, and the delivery is made)."""
    try:
        if error is None:
            return bool(await res.redis.delete(keys.sink_failing(sink_key)))
        return bool(await res.redis.set(keys.sink_failing(sink_key), error.encode(), nx=True))
    except REDIS_DOWN:
        return error is not None
