"""Prometheus metrics of the workers (summed on the receiver's /metrics under `pkrelay run`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_LOGGED = Counter("pkrelay_events_logged_total", "Events written to the event log", ["type", "source"])
DELIVERIES = Counter(
    "pkrelay_deliveries_total", "Delivery attempts by sink and outcome (delivered, failed, dead, skipped)",
    ["sink", "outcome"],
)
DEAD_LETTERED = Counter("pkrelay_dead_lettered_total", "Deliveries given up after the retry window", ["sink"])
DELIVERY_LATENCY = Histogram(
    "pkrelay_delivery_latency_seconds", "From receiving an event to a sink accepting it", ["sink"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
