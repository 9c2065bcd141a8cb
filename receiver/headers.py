"""Security headers: on every dashboard page, static file, redirect and error, and
(without the page-specific parts) on the JSON answers of /api.

The dashboard needs no inline script or style: its one script and its stylesheet
are static files, member colours are SVG `fill` attributes (not `style=`), avatars
are remote https images. So the policy allows only this origin, plus https and data:
images, and nothing may frame the pages but the dashboard itself.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
                 "connect-src 'self'; object-src 'none'; frame-ancestors 'self'; base-uri 'none'; "
                 "form-action 'self'")
# JSON answers load nothing and are framed by nobody.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

DASHBOARD_HEADERS = {
    "content-security-policy": DASHBOARD_CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "SAMEORIGIN",
    "referrer-policy": "same-origin",
}
API_HEADERS = {
    "content-security-policy": API_CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class SecurityHeaders(ASGIMiddleware):
    """Sets `headers` on every answer of the routes it wraps (replacing any the
    handler set), errors included: Litestar's exception handler runs inside it."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, headers: dict[str, str]) -> None:
        self._names = {name.encode() for name in headers}
        self._headers = [(name.encode(), value.encode()) for name, value in headers.items()]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in self._names]
                message = {**message, "headers": [*kept, *self._headers]}
            await send(message)

        await next_app(scope, receive, sending)
