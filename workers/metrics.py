"""Prometheus metrics of the workers (summed on the receiver's /metrics under `pkrelay run`)."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram, start_http_server

from pkrelay.config import Settings

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


def serve(settings: Settings) -> None:
    """A worker apart from any receiver (`pkrelay worker` in a split deployment) has no
    /metrics page to appear on: it serves its own, when a port is configured."""
    port = settings.server.worker_metrics_port
    if port and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        start_http_server(port, addr=settings.server.host)
