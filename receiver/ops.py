"""Operational routes: liveness, readiness, metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from redis.exceptions import RedisError

from pkrelay import __version__, queue
from receiver import metrics
from receiver.auth_limit import BearerLimit
from receiver.relay import Relay


@get("/healthz", summary="200 while the process lives, with the version it runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@get("/readyz", summary="200 when Redis and the database answer and the spool drains, else 503 naming what failed")
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    relay: Relay = request.app.state.relay
    status = await relay.readiness()
    ready = all(v == "ok" for v in status.values())
    return Response(status, status_code=200 if ready else 503)


def metrics_access(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Open while server.metrics_token is empty; else 401 without it as Bearer."""
    token = connection.app.state.relay.live.current.server.metrics_token
    if not token:
        return
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.matches(given.strip()):
        raise NotAuthorizedException("a valid metrics token is required", headers={"WWW-Authenticate": "Bearer"})


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4",
     guards=[metrics_access], middleware=[BearerLimit()],
     responses={401: ResponseSpec(None, description="server.metrics_token is set and was not given as Bearer"),
                429: ResponseSpec(None, description="too many failed authentications from this address")})
async def prometheus(request: Request[Any, Any, Any]) -> bytes:
    relay: Relay = request.app.state.relay
    try:
        metrics.QUEUE_DEPTH.set(await queue.depth(relay.redis))
    except (RedisError, OSError):
        pass  # keep the last known depth; /readyz says Redis is down
    metrics.SPOOLED.set(len(relay.spool.files()))
    metrics.SPOOL_OLDEST.set(relay.spool.oldest_seconds())
    return metrics.render()
