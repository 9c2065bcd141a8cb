"""/api/*: the event log and the systems, for operators (Bearer admin_token)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Router, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter

from pkrelay import status
from pkrelay.envelope import Event
from pkrelay.store import eventlog, sinks
from pkrelay.store.deliveries import Delivery, State, listing
from pkrelay.store.sinks import SinkStatus
from receiver.auth_limit import BearerLimit
from receiver.headers import API_HEADERS, SecurityHeaders
from receiver.relay import Relay


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """404 while no admin_token is set (the API is off), 401 without the right one."""
    token = connection.app.state.relay.live.current.server.admin_token
    if not token:
        raise NotFoundException()
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.matches(given.strip()):
        raise NotAuthorizedException("a valid admin token is required", headers={"WWW-Authenticate": "Bearer"})


# What admin_only answers, for the OpenAPI document.
GUARDED = {
    401: ResponseSpec(None, description="no valid admin token"),
    404: ResponseSpec(None, description="the API is off: server.admin_token is empty"),
    429: ResponseSpec(None, description="too many failed authentications from this address: see Retry-After"),
}


@get("/events", summary="The event log, newest first", responses=GUARDED)
async def list_events(
    request: Request[Any, Any, Any],
    system: Annotated[str | None, QueryParameter(description="system name or UUID")] = None,
    event_type: Annotated[str | None, QueryParameter(name="type", description="event type")] = None,
    since: Annotated[datetime | None, QueryParameter(description="ISO 8601 time")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[Event]:
    relay: Relay = request.app.state.relay
    return await eventlog.query(relay.engine, system=system, event_type=event_type, since=since, limit=limit)


@get("/deliveries", summary="Deliveries in one state (dead-lettered by default), newest event first",
     responses=GUARDED)
async def list_deliveries(
    request: Request[Any, Any, Any],
    delivery_state: Annotated[
        State, QueryParameter(name="state", description="pending, dead, delivered or skipped")] = "dead",
    sink: Annotated[str | None, QueryParameter(description="sink name (or key)")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[Delivery]:
    relay: Relay = request.app.state.relay
    return await listing(relay.engine, delivery_state, sink, limit)


@get("/systems", summary="Each system: mode, polling, webhook, last dispatch, last poll, API budget use",
     responses=GUARDED)
async def list_systems(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    relay: Relay = request.app.state.relay
    return await status.systems(relay.live.current, relay.engine, relay.redis)


@get("/sinks", summary="Each sink: state (active or disabled, why, since when), last success and error, next attempt, "
                     "deliveries by state", responses=GUARDED)
async def list_sinks(request: Request[Any, Any, Any]) -> list[SinkStatus]:
    relay: Relay = request.app.state.relay
    return await sinks.listing(relay.engine, relay.live.current.sinks)


api_router = Router(path="/api", route_handlers=[list_events, list_deliveries, list_systems, list_sinks],
                    guards=[admin_only],
                    middleware=[SecurityHeaders(API_HEADERS), BearerLimit()])
