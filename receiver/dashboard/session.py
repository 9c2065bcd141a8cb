"""Dashboard sessions: a signed, expiring cookie, and the CSRF token that goes with it.

Signed, so any number of receivers share sessions without a session store. The key
is derived from the admin token: changing the token ends every session. The cookie
holds no secret, only an expiry, a random nonce (the session's id) and their HMAC.

Logging out ends the session on the server too: its id is recorded as revoked in
Redis (`keys.session_revoked`) until the session's own expiry, so a copy of the
cookie, and the CSRF token that goes with it, stop working on every receiver. The
process that logged it out also remembers it, so it stays ended there while Redis
does not answer; a receiver that cannot reach Redis accepts the sessions it has not
seen end (Redis down must not lock the operator out of the dashboard).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from redis.asyncio import Redis
from redis.exceptions import RedisError

from pkrelay import keys
from pkrelay.config import Secret

COOKIE = "pkrelay_session"
log = logging.getLogger("pkrelay.dashboard")


@dataclass
class DashboardSettings:
    """How long a login lasts (tests shorten it)."""

    session_seconds: float = 12 * 3600
    # The sessions this process saw logged out (session hash -> expiry): the fallback
    # of the Redis record while Redis does not answer.
    ended_here: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int

    def csrf(self, admin_token: Secret) -> str:
        """The token every POST of this session must carry."""
        return _sign(admin_token, f"csrf.{self.nonce}")

    @property
    def id_hash(self) -> str:
        """How Redis names this session: a hash of its id, never the cookie."""
        return hashlib.sha256(f"pkrelay session {self.nonce}".encode()).hexdigest()[:32]


def _sign(admin_token: Secret, message: str) -> str:
    key = hashlib.sha256(b"pkrelay dashboard session\0" + admin_token.reveal().encode()).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def issue(admin_token: Secret, lifetime: float) -> tuple[str, Session]:
    """A new session and its cookie value."""
    session = Session(secrets.token_urlsafe(16), int(time.time() + lifetime))
    body = f"{session.expires}.{session.nonce}"
    return f"{body}.{_sign(admin_token, body)}", session


async def read(connection: ASGIConnection[Any, Any, Any, Any]) -> Session | None:
    """The connection's live session, or None (absent, forged, expired, logged out, dashboard off)."""
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
    session = Session(nonce, int(expires))
    if await _ended(connection, session):
        return None
    return session


async def has_session(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    return await read(connection) is not None


def _stores(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[Redis, dict[str, int]]:
    settings: DashboardSettings = connection.app.state.dashboard
    return connection.app.state.relay.redis, settings.ended_here


async def _ended(connection: ASGIConnection[Any, Any, Any, Any], session: Session) -> bool:
    redis, ended_here = _stores(connection)
    if session.id_hash in ended_here:
        return True
    try:
        return bool(await redis.exists(keys.session_revoked(session.id_hash)))
    except (RedisError, OSError):
        return False  # not seen ending here, and nobody to ask: see the module's docstring


async def end(connection: ASGIConnection[Any, Any, Any, Any], session: Session) -> None:
    """Log `session` out on every receiver, until it would have expired anyway."""
    redis, ended_here = _stores(connection)
    now = time.time()
    for hashed in [h for h, expires in ended_here.items() if expires <= now]:
        del ended_here[hashed]  # past their expiry: refused for that reason now
    ended_here[session.id_hash] = session.expires
    try:
        await redis.set(keys.session_revoked(session.id_hash), "1", exat=session.expires + 1)
    except (RedisError, OSError) as exc:
        log.warning("dashboard logout recorded on this receiver only: Redis unavailable (%s)", type(exc).__name__)


def csrf_ok(connection: ASGIConnection[Any, Any, Any, Any], session: Session, given: str | None) -> bool:
    admin_token: Secret = connection.app.state.relay.live.current.server.admin_token
    return bool(given) and hmac.compare_digest(str(given), session.csrf(admin_token))


def secure(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """`Secure` cookies over HTTPS only: home users reach the dashboard over plain
    HTTP on their LAN, where a Secure cookie would never come back."""
    public_url: str = connection.app.state.relay.live.current.server.public_url
    return connection.url.scheme == "https" or public_url.startswith("https")
