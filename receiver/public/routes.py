"""/public/{name}/...: a system's current front for anyone, without auth.

Only for systems with `public_front = true`; any other name, configured or not, is
the same 404 (same body, same path through the code). The JSON and the stream allow
every origin (`Access-Control-Allow-Origin: *`); the widget page may be framed by any
site (`frame-ancestors *`) and runs only its own static script and stylesheet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from litestar import Request, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter
from litestar.response import ServerSentEvent

from pkrelay.config import SystemConfig
from receiver.headers import API_HEADERS, SecurityHeaders
from receiver.public import front
from receiver.public.stream import open_front_stream
from receiver.relay import Relay

STATIC = Path(__file__).parent / "static"
MAX_AGE = 5  # SPEC: Cache-Control: max-age=5

PUBLIC_HEADERS = {
    **API_HEADERS,
    "access-control-allow-origin": "*",
    "access-control-allow-headers": "If-None-Match, Last-Event-ID",
    "access-control-expose-headers": "ETag",
}
# The widget: framed by any site, loading only its own script, stylesheet and stream,
# and avatars (https or data: images).
WIDGET_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src https: data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors *")
WIDGET_HEADERS = {
    "content-security-policy": WIDGET_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "access-control-allow-origin": "*",
}
Name = Annotated[str, PathParameter(description="the system's name in the config", max_length=200)]
NOT_PUBLIC = {404: ResponseSpec(None, description="no system of this name has public_front = true")}


def _system(request: Request[Any, Any, Any], name: str) -> tuple[Relay, SystemConfig]:
    relay: Relay = request.app.state.relay
    system = front.public_system(relay, name)
    if system is None:
        raise NotFoundException()
    return relay, system


@get("/{name:str}/front", summary="A public system's current front", responses=NOT_PUBLIC)
async def public_front(request: Request[Any, Any, Any], name: Name) -> Response[bytes]:
    relay, system = _system(request, name)
    now = await front.read(relay, system)
    headers = {"ETag": now.etag, "Cache-Control": f"max-age={MAX_AGE}"}
    if front.matches(request.headers.get("if-none-match"), now.etag):
        return Response(b"", status_code=304, headers=headers)
    return Response(now.body, media_type="application/json", headers=headers)


@get("/{name:str}/front/stream", summary="A public system's front, live, as Server-Sent Events",
     responses={**NOT_PUBLIC, 429: ResponseSpec(None, description="server.max_streams streams are connected")})
async def public_front_stream(request: Request[Any, Any, Any], name: Name) -> ServerSentEvent:
    relay, system = _system(request, name)
    return await open_front_stream(relay, request.app.state.streams, request.app.state.stream, system)


def _file(name: str, media_type: str) -> Response[bytes]:
    return Response((STATIC / name).read_bytes(), media_type=media_type,
                    headers={"Cache-Control": "max-age=300"})


@get("/{name:str}/widget", summary="A page for an <iframe> showing a public system's front, live",
     responses=NOT_PUBLIC)
async def public_widget(request: Request[Any, Any, Any], name: Name) -> Response[bytes]:
    _system(request, name)
    return _file("widget.html", "text/html; charset=utf-8")


@get("/widget.js", include_in_schema=False)
async def widget_js() -> Response[bytes]:
    return _file("widget.js", "text/javascript; charset=utf-8")


@get("/widget.css", include_in_schema=False)
async def widget_css() -> Response[bytes]:
    return _file("widget.css", "text/css; charset=utf-8")


public_router = Router(path="/public", route_handlers=[public_front, public_front_stream],
                       middleware=[SecurityHeaders(PUBLIC_HEADERS)])
widget_router = Router(path="/public", route_handlers=[public_widget, widget_js, widget_css],
                       middleware=[SecurityHeaders(WIDGET_HEADERS)])
