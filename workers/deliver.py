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

from pkrelay import keys, privacy, queue, shaping
from pkrelay.config import ShapedSink, Sink
from pkrelay.labels import sink_label
from pkrelay.store import deliveries, sinks, state
from pkrelay.store.deliveries import Pending, Settlement
from pkrelay.store.state import Kind
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
    Retry to try it again later. A disabled sink's deliveries are held (left pending,
    their jobs done); a sink held back by a Retry-After has them all wait for it."""
    res = Resources.of(ctx)
    sink = res.settings.sink(sink_key)
    own = deliveries.job_id(event_id, sink_key)
    jobs = {deliveries.job_id(e, sink_key): e for e in followers or ()}
    taken = await queue.take_over(res.redis, own, list(jobs))
    batch: list[Pending] = []
    tried: list[tuple[Settlement, float | None]] = []
    try:
        async with res.engine.connect() as conn:
            health = await sinks.health(conn, sink_key)
        wait = (health.hold_until - datetime.now(UTC)).total_seconds() if health.hold_until else 0.0
        held = sink is not None and health.disabled
        if not held and wait <= 0:
            batch = await deliveries.load(res.engine, sink_key, [event_id, *(jobs[j] for j in taken)])
            if sink is None:
                tried = [(Settlement(p.event.id, "dead", "the sink is no longer configured"), None) for p in batch]
            else:
                tried = list(await asyncio.gather(*(_attempt(res, sink, p) for p in batch)))
            summary, retry_in = _summary(res, sink_key, batch, tried)
            disable_after = timedelta(hours=res.settings.delivery.disable_after_h)
            held = await deliveries.settle(res.engine, sink_key, [t for t, _ in tried], then=lambda conn: sinks.record(
                conn, sink_key, summary, disable_after))
    except BaseException:
        await queue.release(res.redis, retry=dict.fromkeys(taken, 0.0))  # not done: their jobs run again
        raise
    if held:  # enable (pkrelay sinks enable, the dashboard) queues them again
        await queue.release(res.redis, done=taken)
        return "held"
    if wait > 0:  # not an attempt: the sink asked for a pause
        await queue.release(res.redis, retry=dict.fromkeys(taken, wait))
        raise Retry(defer=wait)
    outcome = "nothing to do"
    for pending, (settled, _) in zip(batch, tried, strict=True):
        if pending.event.id == event_id:
            outcome = "failed" if settled.status == "pending" else settled.status
    await queue.release(res.redis, done=[j for j in taken if j not in retry_in],
                        retry={j: delay for j, delay in retry_in.items() if j != own})
    if own in retry_in:
        raise Retry(defer=retry_in[own])
    return outcome


def _summary(res: Resources, sink_key: str, batch: list[Pending],
             tried: list[tuple[Settlement, float | None]]) -> tuple[sinks.Batch, dict[str, float]]:
    """The batch as the sink's health sees it, and the retry delay of each failed
    delivery's job: its backoff, or the sink's Retry-After (at most retry_max_s) if longer."""
    asked = [after for _, after in tried if after is not None]
    pause = min(max(asked), res.retry_policy.cap) if asked else 0.0
    now = datetime.now(UTC)
    retry_in: dict[str, float] = {}  # job id -> seconds
    failed = [(p, s) for p, (s, _) in zip(batch, tried, strict=True) if s.attempt is not None and s.error is not None]
    for pending, settled in failed:
        if settled.status == "pending":
            backoff = res.retry_policy.delay(pending.attempts + 1)
            retry_in[deliveries.job_id(pending.event.id, sink_key)] = max(backoff, pause)
    summary = sinks.Batch(
        succeeded=sum(s.status == "delivered" for s, _ in tried), failed=len(failed),
        gone=any(s.attempt is not None and s.attempt["status_code"] == 410 for s, _ in tried),
        last_error=failed[-1][1].error if failed else None,
        retry_at=now + timedelta(seconds=min(retry_in.values())) if retry_in else None,
        hold_until=now + timedelta(seconds=pause) if pause else None)
    return summary, retry_in


async def _attempt(res: Resources, sink: Sink, pending: Pending) -> tuple[Settlement, float | None]:
    """Send one delivery, or say why not; what became of it, and the seconds the sink
    asked us to wait before the next attempt (Retry-After), if it did."""
    event = pending.event
    label = sink_label(res.settings, sink)  # metrics and logs: never the key, a hash of the URL
    envelope: dict[str, Any] | None = msgspec.to_builtins(event)
    if sink.public_only and envelope is not None:
        async with res.engine.connect() as conn:
            stored = await state.get(conn, event.system_id, Kind.SYSTEM, event.system_id) if event.system_id else None
        envelope = privacy.strip(envelope, system=stored.data if stored else None)
    if envelope is None:
        DELIVERIES.labels(label, "skipped").inc()
        return Settlement(event.id, "skipped", "nothing public in this event"), None
    if isinstance(sink, ShapedSink) and sink.filter and not shaping.matches(sink.filter, envelope):
        DELIVERIES.labels(label, "skipped").inc()
        return Settlement(event.id, "skipped", "the sink's filter is false for this event"), None
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        async with res.sending(sink.key):
            started = time.perf_counter()
            status_code = await sender_for(sink, res).send(Outgoing(event, msgspec.json.encode(envelope),
                                                                    pending.system, envelope))
    except DeliveryFailed as exc:
        status_code, error, retry_after = exc.status, exc.reason, exc.retry_after
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
        return Settlement(event.id, "delivered", None, attempt), None
    if now - first >= timedelta(seconds=res.retry_policy.window):
        DELIVERIES.labels(label, "dead").inc()
        DEAD_LETTERED.labels(label).inc()
        log.warning("dead-lettered %s for sink %s after %d attempts: %s", event.id, label, attempts, error)
        return Settlement(event.id, "dead", error, attempt), retry_after
    DELIVERIES.labels(label, "failed").inc()
    # One WARNING when a sink starts failing, not one per retry; the rest at DEBUG.
    if await _health_changed(res, sink.key, error):
        log.warning("sink %s is failing: delivery of %s: %s; retrying with backoff (said once: the next line is "
                    "when it recovers)", label, event.id, error)
    else:
        log.debug("delivery of %s to %s failed (%s), attempt %d", event.id, label, error, attempts)
    return Settlement(event.id, "pending", error, attempt), retry_after


async def _health_changed(res: Resources, sink_key: str, error: str | None) -> bool:
    """Record that the sink fails (`error`) or works (None); whether that is news. Redis
    away: news (a line too many beats a failure unsaid, and the delivery is made)."""
    try:
        if error is None:
            return bool(await res.redis.delete(keys.sink_failing(sink_key)))
        return bool(await res.redis.set(keys.sink_failing(sink_key), error.encode(), nx=True))
    except REDIS_DOWN:
        return error is not None
