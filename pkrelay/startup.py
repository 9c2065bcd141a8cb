"""Starting beside services that are not up yet, and the container image's healthcheck.

In a fresh deployment every container starts at once: PostgreSQL takes seconds to
initialise and Redis may still be loading its append-only file. So `serve`, `worker`,
`run` and `migrate` retry what they need with backoff, one WARNING line per attempt,
for `server.startup_wait_s` seconds, and only then give up with a one-line error.
Every role brings the schema up to date on start; concurrent migrators do not race:
on PostgreSQL `db.migrate` holds an advisory lock for the whole upgrade, on SQLite the
upgrade's transaction is `BEGIN IMMEDIATE`, which admits one writer at a time.

`python -m pkrelay.startup health` is the image's HEALTHCHECK: one image runs every
role, so it reads the role and `--config` from the container's main process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import redis.exceptions

from pkrelay import config, db, queue

log = logging.getLogger("pkrelay.startup")

MAX_DELAY_S = 5.0
# Failures that mean "not up yet": anything else (a wrong password, a missing
# database, a malformed URL) is a mistake that waiting would not fix.
DATABASE_NOT_UP = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
REDIS_NOT_UP = (OSError, TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class StartupError(RuntimeError):
    """A service the process needs did not answer within `server.startup_wait_s`."""


def _not_up(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The innermost cause in `exc`'s chain (SQLAlchemy and redis-py wrap the socket's
    error) that means "not up yet", or None when the failure is of another kind."""
    found: BaseException | None = None
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, redis.exceptions.AuthenticationError):
            break
        if isinstance(seen, kinds):
            found = seen
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return None if isinstance(seen, redis.exceptions.AuthenticationError) else found


async def _retry(what: str, attempt: Callable[[], Awaitable[object]], kinds: tuple[type[BaseException], ...],
                 deadline: float) -> None:
    delay = 0.5
    started = time.monotonic()
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            cause = _not_up(exc, kinds)
            if cause is None:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupError(
                    f"{what} not reachable after {time.monotonic() - started:.0f} s "
                    f"({type(cause).__name__}: {cause}); is it running, and is the URL right? "
                    f"(server.startup_wait_s sets how long to wait)") from None
            wait = min(delay, left)
            log.warning("%s not reachable yet (%s), retrying in %g s, giving up in %.0f s",
                        what, type(cause).__name__, round(wait, 1), max(0.0, left - wait))
            await asyncio.sleep(wait)
            delay = min(delay * 2, MAX_DELAY_S)


async def wait_for_redis(url: str, deadline: float) -> None:
    """Return once Redis answers PING (a server still loading its AOF answers LOADING: wait)."""
    async def ping() -> None:
        client = queue.connect(url, timeout=2)
        try:
            await client.ping()
        finally:
            await client.aclose()

    await _retry("Redis", ping, REDIS_NOT_UP, deadline)


async def migrate_with_lock(url: str, deadline: float) -> None:
    """Bring the schema up to date, waiting for the database; the upgrade holds the
    database's migration lock (see the module's docstring), so replicas may all do this."""
    await _retry("database", lambda: db.migrate_url(url), DATABASE_NOT_UP, deadline)


def prepare(settings: config.Settings, redis_url: str | None) -> None:
    """Wait for Redis (when given) and the database, and migrate, within startup_wait_s."""
    deadline = time.monotonic() + settings.server.startup_wait_s

    async def go() -> None:
        if redis_url:
            await wait_for_redis(redis_url, deadline)
        await migrate_with_lock(settings.database_url, deadline)

    asyncio.run(go())


# The image's healthcheck ---------------------------------------------------------

def _main_process(cmdline: Path) -> tuple[str, str | None]:
    """The pkrelay command (serve, worker, run, migrate...) and --config of the main process."""
    argv = [a.decode() for a in cmdline.read_bytes().split(b"\0") if a]
    role = next((a for a in argv if a in ("serve", "worker", "run", "migrate")), "")
    path = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), None)
    path = path or next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    return role, path


def health(cmdline: Path = Path("/proc/1/cmdline")) -> str | None:
    """None when the main process does its job, else what is wrong (one line)."""
    import httpx

    role, path = _main_process(cmdline)
    if not role:
        return f"no pkrelay role in {cmdline}"
    if role == "migrate":
        return None  # a one-shot job: running is all there is to check
    settings = config.load(config.config_path(path))
    if role in ("serve", "run"):
        url = f"http://127.0.0.1:{settings.server.port}/healthz"
    elif settings.server.worker_metrics_port:
        url = f"http://127.0.0.1:{settings.server.worker_metrics_port}/healthz"  # open with a metrics_token too
    else:
        # No port to ask the worker itself: at least the queue it serves must answer.
        import redis as sync_redis

        try:
            sync_redis.Redis.from_url(settings.redis.url, socket_timeout=3, socket_connect_timeout=3).ping()
        except (redis.exceptions.RedisError, ValueError) as exc:
            return f"Redis does not answer ({type(exc).__name__})"
        return None
    try:
        status = httpx.get(url, timeout=3).status_code
    except httpx.HTTPError as exc:
        return f"{url} does not answer ({type(exc).__name__})"
    return None if status == 200 else f"{url} answered {status}"


def main(argv: list[str]) -> int:
    if argv != ["health"]:
        print("usage: python -m pkrelay.startup health", file=sys.stderr)
        return 2
    # The role warned about removed config keys when it loaded; a probe every few
    # seconds must not say it again each time.
    quiet = logging.getLogger("pkrelay.config")
    quiet.disabled = True
    try:
        problem = health()
    except (OSError, config.ConfigError) as exc:
        problem = str(exc)
    finally:
        quiet.disabled = False
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
