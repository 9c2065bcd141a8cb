"""Every way a PluralKit API call can fail, written out once.

No message or repr carries the token: errors are built from status, PluralKit's
error code and message, and the path, never from request headers.
"""

from __future__ import annotations

from pkrelay.retry import Retryable


class PluralKitError(Exception):
    """Base of everything the client raises."""


class TransportError(PluralKitError, Retryable):
    """No answer: timeout, refused connection, broken stream."""


class RateLimitWaitExceeded(PluralKitError, Retryable):
    """The limiter would make the caller wait longer than its bound; retry the job later."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the rate limit needs a wait of {wait:.1f} s")
        self.retry_in = wait


class ApiError(PluralKitError):
    """PluralKit answered with an error status."""

    def __init__(self, status: int, code: int, message: str, path: str) -> None:
        super().__init__(f"{status} {code}: {message} ({path})")
        self.status = status
        self.code = code
        self.message = message
        self.path = path


class BadRequest(ApiError):
    """400, codes 4xxxx; `errors` holds the field errors when PluralKit gave them."""

    def __init__(self, status: int, code: int, message: str, path: str, errors: object = None) -> None:
        super().__init__(status, code, message, path)
        self.errors = errors


class Unauthorized(ApiError):
    """401: missing or invalid token."""


class Forbidden(ApiError):
    """403, codes 3xxxx: the system made this private."""


class NotFound(ApiError):
    """404, codes 2xxxx: no such entity (or gone since)."""


class ServerError(ApiError, Retryable):
    """5xx."""
