"""Prometheus metrics of the workers (summed on the receiver's /metrics under `pkrelay run`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

from pkrelay.config import Secret, Settings

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


def serve(settings: Settings) -> WSGIServer | None:
    """A worker apart from any receiver (`pkrelay worker` in a split deployment) has no
    /metrics page to appear on: it serves its own, when a port is configured (the
    server, serving from a daemon thread; None when it serves none)."""
    port = settings.server.worker_metrics_port
    if not port or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return None

    class Server(ThreadingWSGIServer):
        pass

    Server.address_family, addr = _get_best_family(settings.server.host, port)  # type: ignore[no-untyped-call]
    httpd = make_server(addr, port, guarded(settings.server.metrics_token), Server, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, name="worker metrics", daemon=True).start()
    return httpd


StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def guarded(token: Secret) -> WSGIApp:
    """prometheus-client's WSGI app behind `token` (Bearer; open while it is empty), and
    /healthz, always open, for probes that hold no token."""
    metrics: WSGIApp = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain"), ("X-Content-Type-Options", "nosniff")])
            return [b"ok\n"]
        scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if token and (scheme.lower() != "bearer" or not token.matches(given.strip())):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer"),
                                                ("X-Content-Type-Options", "nosniff")])
            return [b"a valid metrics token is required\n"]
        return metrics(environ, start_response)

    return app
