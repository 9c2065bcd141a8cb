"""Every way a PluralKit API call can fail, written out once.

No message or repr carries the token: errors are built from status, PluralKit's
error code and message, and the path, never from request headers.
"""

from __future__ import annotations


class PluralKitError(Exception):
    """Base of everything the client raises."""


class TransportError(PluralKitError):
    """No answer: timeout, refused connection, broken stream."""


class RateLimitWaitExceeded(PluralKitError):
    """The limiter would make the caller wait longer than its bound; retry the job later."""

    def __init__(self, defer_seconds: float) -> None:
        super().__init__(f"the rate limit needs a wait of {defer_seconds:.1f} s")
        self.defer_seconds = defer_seconds


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


class RateLimited(ApiError):
    """429; `retry_after` in seconds."""

    def __init__(self, status: int, code: int, message: str, path: str, retry_after: float, scope: str) -> None:
        super().__init__(status, code, message, path)
        self.retry_after = retry_after
        self.scope = scope


class ServerError(ApiError):
    """5xx."""
