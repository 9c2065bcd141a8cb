"""The Litestar application of the receiver."""

from __future__ import annotations

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from pkrelay import __version__
from pkrelay.config import LiveSettings
from receiver.api import api_router
from receiver.auth_limit import BearerLimit, FailedAuthLimit
from receiver.dashboard.routes import dashboard_router, template_config
from receiver.dashboard.session import DashboardSettings
from receiver.dispatch import dispatch_handlers
from receiver.ops import healthz, prometheus, readyz
from receiver.public.routes import public_router, widget_router
from receiver.relay import Relay
from receiver.stream import event_stream
from receiver.stream_hub import StreamHub, StreamSettings


def create_app(live: LiveSettings, redis_url: str) -> Litestar:
    settings = live.current
    relay = Relay(live, redis_url)
    streams = StreamHub(relay.engine)
    return Litestar(
        route_handlers=[*dispatch_handlers(settings.server.dispatch_path), healthz, readyz, prometheus, api_router,
                        # /api/stream's token checks count against the failed-auth limit too
                        Router(path="/", route_handlers=[event_stream], middleware=[BearerLimit()]),
                        dashboard_router, public_router, widget_router],
        lifespan=[relay.lifespan, streams.lifespan],  # the streams end before the engine goes
        state=State({"relay": relay, "stream": StreamSettings(), "streams": streams,
                     "dashboard": DashboardSettings(), "auth_limit": FailedAuthLimit()}),
        template_config=template_config,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(title="pkrelay", version=__version__, path="/schema"),
        logging_config=None,
    )
