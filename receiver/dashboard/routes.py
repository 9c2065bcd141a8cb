"""The dashboard's pages and actions, under `/` (off, 404, while admin_token is empty).

Pages are plain HTML from Jinja templates, readable without JavaScript; only the
events page adds live rows with the browser's EventSource. Every action is a POST
carrying the session's CSRF token (403 without it); an expired session goes back
to the login form.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException, NotFoundException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.params import PathParameter, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, ServerSentEvent, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from markupsafe import Markup

from pkrelay.config import Sink
from receiver.auth_limit import FailedAuthLimit, client_address
from receiver.dashboard import actions, pings, queries, session
from receiver.headers import DASHBOARD_HEADERS, SecurityHeaders
from receiver.relay import Relay
from receiver.stream import open_stream

HERE = Path(__file__).parent


class LoginRequired(Exception):
    """No live session: back to the login form, then to where the user was going."""

    def __init__(self, path: str) -> None:
        self.path = path


def dashboard_on(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    if not connection.app.state.relay.live.current.server.admin_token:
        raise NotFoundException()


def _relay(request: Request[Any, Any, Any]) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


async def _session(request: Request[Any, Any, Any]) -> session.Session:
    current = await session.read(request)
    if current is None:
        raise LoginRequired(request.url.path)
    return current


async def _action(request: Request[Any, Any, Any]) -> tuple[Any, Sink | None, session.Session]:
    """The form of a POST from a live session with its CSRF token, the sink it names, the session."""
    current = await _session(request)
    form = await request.form()
    if not session.csrf_ok(request, current, form.get("csrf")):
        raise PermissionDeniedException("this action needs the form's CSRF token; reload the page and try again")
    sink = next((s for s in _relay(request).live.current.sinks if s.key == form.get("sink")), None)
    return form, sink, current


def _page(request: Request[Any, Any, Any], name: str, current: session.Session, **context: Any) -> Template:
    token = _relay(request).live.current.server.admin_token
    return Template(template_name=name, context={"csrf": current.csrf(token), "path": request.url.path, **context})


def _safe_next(value: Any) -> str:
    """Only a path of this site: never an open redirect."""
    return value if isinstance(value, str) and value.startswith("/") and not value.startswith("//") else "/"


@get("/login", include_in_schema=False)
async def login_form(request: Request[Any, Any, Any],
                     next_path: Annotated[str, QueryParameter()] = "/") -> Template | Redirect:
    if await session.has_session(request):
        return Redirect(_safe_next(next_path))
    return Template(template_name="login.html", context={"next": _safe_next(next_path), "error": None})


@post("/login", include_in_schema=False, status_code=303)
async def login(request: Request[Any, Any, Any]) -> Template | Redirect:
    form = await request.form()
    server = _relay(request).live.current.server
    target = _safe_next(form.get("next"))
    limit: FailedAuthLimit = request.app.state.auth_limit
    address = client_address(request)
    wait = await limit.blocked(_relay(request).redis, address)
    if wait is not None:  # the right token too: a guess is never confirmed while blocked
        return Template(template_name="login.html", status_code=429, headers={"Retry-After": str(wait)},
                        context={"next": target, "error": f"Too many failed logins from this address; "
                                                          f"try again in {wait} seconds."})
    if not server.admin_token.matches(str(form.get("token") or "")):
        await limit.failed(_relay(request).redis, address)
        return Template(template_name="login.html", status_code=401,
                        context={"next": target, "error": "That is not the admin token."})
    lifetime = request.app.state.dashboard.session_seconds
    value, _ = session.issue(server.admin_token, lifetime)
    cookie = Cookie(key=session.COOKIE, value=value, httponly=True, secure=session.secure(request),
                    samesite="lax", path="/", max_age=int(lifetime))
    return Redirect(target, cookies=[cookie], status_code=303)


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    _, _, current = await _action(request)
    await session.end(request, current)
    return Redirect("/login", cookies=[Cookie(key=session.COOKIE, value="", max_age=0, path="/", httponly=True)],
                    status_code=303)


@get("/", include_in_schema=False)
async def overview(request: Request[Any, Any, Any]) -> Template:
    current = await _session(request)
    return _page(request, "overview.html", current, **await queries.overview(_relay(request)))


@get("/events", include_in_schema=False)
async def events(request: Request[Any, Any, Any], system: Annotated[str, QueryParameter()] = "",
                 event_type: Annotated[str, QueryParameter()] = "") -> Template:
    current = await _session(request)
    relay = _relay(request)
    settings = relay.live.current
    names = {s.system_id: s.name for s in settings.systems if s.system_id}
    return _page(request, "events.html", current, events=await queries.events(relay, system, event_type),
                 systems=[s.name for s in settings.systems], types=await queries.event_types(relay),
                 system=system, event_type=event_type, system_names=names,
                 after=await queries.newest_logged(relay, system, event_type))


@get("/events/live", include_in_schema=False)
async def live_events(request: Request[Any, Any, Any], system: Annotated[str, QueryParameter()] = "",
                      event_type: Annotated[str, QueryParameter()] = "",
                      after: Annotated[str | None, QueryParameter()] = None) -> ServerSentEvent:
    """The events page's EventSource: /api/stream's messages, unnamed (EventSource has
    no catch-all listener for named ones) and authorized by the session cookie. The
    page passes `after`, the newest event it was rendered with, so nothing logged in
    between is missed."""
    if await session.read(request) is None:
        raise NotAuthorizedException("the dashboard session has ended; log in again")
    return await open_stream(request, [system] if system else [], [event_type] if event_type else [], after,
                             named=False)


@get("/events/{event_id:str}", include_in_schema=False)
async def event(request: Request[Any, Any, Any], event_id: Annotated[str, PathParameter()]) -> Template:
    current = await _session(request)
    detail = await queries.event_detail(_relay(request), event_id)
    if detail is None:
        raise NotFoundException(f"no event {event_id[:64]!r} in the log")
    return _page(request, "event.html", current, **detail)


@get("/deliveries", include_in_schema=False)
async def deliveries(request: Request[Any, Any, Any], replayed: Annotated[int | None, QueryParameter()] = None,
                     tested: Annotated[str | None, QueryParameter()] = None) -> Template:
    current = await _session(request)
    return _page(request, "deliveries.html", current, sinks=await queries.problem_deliveries(_relay(request)),
                 replayed=replayed, tested=tested)


@post("/deliveries/replay", include_in_schema=False, status_code=303)
async def replay(request: Request[Any, Any, Any]) -> Redirect:
    form, sink, _ = await _action(request)
    if sink is None:
        raise NotFoundException("no such sink")
    # One row's button, the ticked rows, or every dead letter of the sink.
    chosen = [str(form["one"])] if form.get("one") else None if form.get("all") else \
        [str(v) for v in form.getall("event_id", [])]
    queued = await actions.replay_dead(_relay(request), sink, chosen)
    return Redirect(f"/deliveries?replayed={queued}", status_code=303)


@post("/deliveries/test", include_in_schema=False, status_code=303)
async def send_test(request: Request[Any, Any, Any]) -> Redirect:
    _, sink, _ = await _action(request)
    if sink is None:
        raise NotFoundException("no such sink")
    event_id = await actions.send_test(_relay(request), sink)
    return Redirect(f"/deliveries?tested={quote(event_id)}", status_code=303)


@post("/sinks/enable", include_in_schema=False, status_code=303)
async def enable_sink(request: Request[Any, Any, Any]) -> Redirect:
    _, sink, _ = await _action(request)
    if sink is None:
        raise NotFoundException("no such sink")
    queued = await actions.enable_sink(_relay(request), sink)
    return Redirect(f"/deliveries?replayed={queued}", status_code=303)


@get("/connect", include_in_schema=False)
async def connect(request: Request[Any, Any, Any]) -> Template:
    current = await _session(request)
    relay = _relay(request)
    settings = relay.live.current
    recent = await pings.recent(relay.redis)  # verified ones only: a stranger cannot fill or fake it
    public = settings.server.public_url
    systems = [{"name": system.name, "mode": system.mode, "api_token": bool(system.api_token),
                "signing_token": bool(system.signing_token), "pings": [p for p in recent if p.system == system.name],
                "dispatch_url": settings.dispatch_url(system) if public else ""} for system in settings.systems]
    return _page(request, "connect.html", current, systems=systems, public_url=public,
                 https=public.startswith("https://"))


def _to_login(_request: Request[Any, Any, Any], exc: LoginRequired) -> Response[Any]:
    return Redirect(f"/login?next_path={quote(exc.path)}", status_code=303)


def _fmt_time(value: datetime | str | float | None) -> str:
    if value is None or value == "":
        return "never"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif isinstance(value, float | int):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when(value: datetime | str | float | None) -> Markup:
    """A time as `<time datetime=...>` in UTC; static/live.js shows it in the browser's
    local time, and how long ago."""
    text = _fmt_time(value)
    if text == "never":
        return Markup("never")
    iso = datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return Markup('<time class="local" datetime="{}">{}</time>').format(iso, text)


def _engine_setup(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["time"] = _fmt_time
    engine.engine.filters["when"] = _when


template_config = TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine,
                                 engine_callback=_engine_setup)

dashboard_router = Router(
    path="/",
    route_handlers=[
        login_form, login, logout, overview, events, live_events, event, deliveries, replay, send_test, enable_sink,
        connect,
        create_static_files_router(path="/static", directories=[HERE / "static"], include_in_schema=False),
    ],
    guards=[dashboard_on],
    exception_handlers={LoginRequired: _to_login},
    middleware=[SecurityHeaders(DASHBOARD_HEADERS)],
)
