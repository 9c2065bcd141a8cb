"""Prometheus metrics of the receiver.

Under `pkrelay run` every process writes to PROMETHEUS_MULTIPROC_DIR and the
receiver's /metrics sums them (prometheus-client's multiprocess mode), so worker
metrics show up on the same page.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest, multiprocess

EVENTS_RECEIVED = Counter(
    "pkrelay_events_received_total",
    "Dispatch requests by event type and outcome "
    "(queued, spooled, ping, unauthorized, invalid, too_large, unavailable, unconfirmed)",
    ["type", "outcome"],
)
QUEUE_DEPTH = Gauge(
    "pkrelay_queue_depth", "Jobs waiting in the arq queue", multiprocess_mode="mostrecent"
)
SPOOLED = Gauge(
    "pkrelay_spool_depth", "Events waiting in the local spool for Redis", multiprocess_mode="mostrecent"
)

SPOOL_OLDEST = Gauge(
    "pkrelay_spool_oldest_seconds", "How long the oldest spooled event has waited (0: spool empty); "
    "growing while Redis answers means the spool is not draining", multiprocess_mode="mostrecent"
)
SPOOL_QUARANTINED = Counter(
    "pkrelay_spool_quarantined_total", "Spool files that could not be decoded, moved to spool/quarantine/"
)


def render() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
