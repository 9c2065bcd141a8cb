"""Outages of the database and of Redis: the errors that pass, and the ones a row carries.

arq retries a job only when it raises `arq.Retry`; anything else fails it for good
(and a failed job is gone from the queue). So every job goes through
`survives_outages`: an error that may pass (a server restarting, a connection dropped,
SQLite locked by another writer) becomes a Retry, and the job carries on when the
server is back: after about a second for Redis (the contract allows a restart to delay
an event by 10 s at most), with backoff for the database. An error in the data itself
(a value the database cannot hold) is not retried: it would fail the same way forever
(`workers.record` stores such rows another way).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

import asyncpg
import sqlalchemy as sa
from arq import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pkrelay.retry import Backoff

log = logging.getLogger("pkrelay.worker")

# Half a second, doubling to half a minute: a restarting database is picked up within
# seconds, a long outage costs one attempt per job every 15-30 s.
OUTAGE_RETRY = Backoff(base=0.5, cap=30.0)
# What a restarting Redis looks like from a job (BusyLoadingError, while it reads its
# append-only file back, is a ConnectionError); such a job runs again this soon.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
REDIS_RETRY_S = 1.0

P = ParamSpec("P")
T = TypeVar("T")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def transient(exc: BaseException) -> bool:
    """Whether this error may pass if the job is tried again later: the database is
    unreachable, restarting, dropped the connection, or (SQLite) locked."""
    for link in _chain(exc):
        if isinstance(link, sa.exc.DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(link, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError):
            return True
        if isinstance(link, OSError | TimeoutError | asyncpg.PostgresConnectionError | asyncpg.InterfaceError
                      | asyncpg.exceptions.OperatorInterventionError):
            return True
        if isinstance(link, sqlite3.OperationalError) and "locked" in str(link):
            return True
    return False


def data_error(exc: BaseException) -> bool:
    """Whether the statement failed on what it was given (a value out of range, too
    long, not encodable), so the same rows would fail again however often tried."""
    return isinstance(exc, sa.exc.StatementError | ValueError | TypeError | OverflowError) and not transient(exc)


def survives_outages(job: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The job, retried (arq's Retry) while the database or Redis is unavailable."""

    @functools.wraps(job)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await job(*args, **kwargs)
        except REDIS_DOWN as exc:
            log.warning("%s: Redis is away (%s); retrying in %.0f s", job.__name__, exc, REDIS_RETRY_S)
            raise Retry(defer=REDIS_RETRY_S) from exc
        except Exception as exc:
            if isinstance(exc, Retry) or not transient(exc):
                raise
            ctx: dict[str, Any] = args[0] if args and isinstance(args[0], dict) else {}
            tries: int = ctx.get("job_try", 1)
            delay = OUTAGE_RETRY.delay(tries)
            log.warning("%s: the database is unavailable (%s), retrying in %.1f s (attempt %d)",
                        job.__name__, type(exc).__name__, delay, tries)
            raise Retry(defer=delay) from None

    return run
