"""Dashboard sessions: a signed, expiring cookie, and the CSRF token that goes with it.

Stateless, so any number of receivers share sessions without a store. The key is
derived from the admin token: changing the token ends every session. The cookie
holds no secret, only an expiry, a random nonce and their HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection

from pkrelay.config import Secret

COOKIE = "pkrelay_session"


@dataclass
class DashboardSettings:
    """How long a login lasts (tests shorten it)."""

    session_seconds: float = 12 * 3600


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int

    def csrf(self, admin_token: Secret) -> str:
        """The token every POST of this session must carry."""
        return _sign(admin_token, f"csrf.{self.nonce}")


def _sign(admin_token: Secret, message: str) -> str:
    key = hashlib.sha256(b"pkrelay dashboard session\0" + admin_token.reveal().encode()).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def issue(admin_token: Secret, lifetime: float) -> tuple[str, Session]:
    """A new session and its cookie value."""
    session = Session(secrets.token_urlsafe(16), int(time.time() + lifetime))
    body = f"{session.expires}.{session.nonce}"
    return f"{body}.{_sign(admin_token, body)}", session


def read(connection: ASGIConnection[Any, Any, Any, Any]) -> Session | None:
    """The connection's live session, or None (absent, forged, expired, dashboard off)."""
    admin_token: Secret = connection.app.state.relay.live.current.server.admin_token
    value = connection.cookies.get(COOKIE, "")
    expires, _, rest = value.partition(".")
    nonce, _, signature = rest.partition(".")
    if not (admin_token and expires.isdigit() and nonce and signature):
        return None
    if not hmac.compare_digest(signature, _sign(admin_token, f"{expires}.{nonce}")):
        return None
    if int(expires) <= time.time():
        return None
    return Session(nonce, int(expires))


def has_session(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    return read(connection) is not None


def csrf_ok(connection: ASGIConnection[Any, Any, Any, Any], session: Session, given: str | None) -> bool:
    admin_token: Secret = connection.app.state.relay.live.current.server.admin_token
    return bool(given) and hmac.compare_digest(str(given), session.csrf(admin_token))


def secure(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """`Secure` cookies over HTTPS only: home users reach the dashboard over plain
    HTTP on their LAN, where a Secure cookie would never come back."""
    public_url: str = connection.app.state.relay.live.current.server.public_url
    return connection.url.scheme == "https" or public_url.startswith("https")
