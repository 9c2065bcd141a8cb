"""The `pkrelay` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from pkrelay import __version__, config, db, logs, queue, starter, startup, supervisor
from pkrelay.redis_server import RedisServerError

log = logging.getLogger("pkrelay")


class UsageError(Exception):
    """A command line that cannot be carried out as given."""


def _load(args: argparse.Namespace, process: str) -> tuple[Path, config.Settings]:
    path = config.config_path(args.config)
    logs.setup([], process)  # formatted from the first line: loading may warn (a removed key)
    settings = config.load(path)
    if args.verbose:
        settings = msgspec.structs.replace(settings, log_level="debug")
    logs.setup(settings.secrets(), process, settings.log_level)
    return path, settings


def _need_redis(settings: config.Settings, command: str) -> str:
    if not settings.redis.url:
        raise config.ConfigError(f"`pkrelay {command}` needs redis.url (only `pkrelay run` embeds a server)")
    return settings.redis.url


def _running_redis(settings: config.Settings, command: str) -> str:
    """redis.url, or the embedded server of a `pkrelay run` using the same data_dir."""
    from pkrelay.redis_server import running_url

    return settings.redis.url or running_url(settings.data_path) or _need_redis(settings, command)


def cmd_run(args: argparse.Namespace) -> int:
    path, settings = _load(args, "run")
    return supervisor.Supervisor(settings, path).run()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver import server
    from receiver.app import create_app

    path, settings = _load(args, "receiver")
    redis_url = _need_redis(settings, "serve")
    host, port = settings.server.host, settings.server.port
    try:  # bound here, before anything else, so a taken port is one clear error
        sock = server.bind(host, port)
    except server.CannotBind as exc:
        print(f"pkrelay serve: {exc}", file=sys.stderr)
        return supervisor.EXIT_CANNOT_BIND
    startup.prepare(settings, None)  # not Redis: while it is down, the receiver spools
    app = create_app(config.LiveSettings(path, settings), redis_url)
    uvicorn.Server(server.config(app, host, port)).run(sockets=[sock])
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers import metrics
    from workers.settings import Worker, worker_settings

    path, settings = _load(args, "worker")
    redis_url = _need_redis(settings, "worker")
    startup.prepare(settings, redis_url)
    metrics.serve(settings)
    Worker(**worker_settings(config.LiveSettings(path, settings), redis_url)).run()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    _, settings = _load(args, "migrate")
    startup.prepare(settings, None)
    print("database schema is up to date")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pkrelay.check import run_checks

    path = config.config_path(args.config)
    logs.setup([], "check")  # loading may warn (a removed key): on stderr, beside the report
    return asyncio.run(run_checks(path))


def cmd_events(args: argparse.Namespace) -> int:
    from pkrelay.store.eventlog import print_events

    _, settings = _load(args, "events")
    return asyncio.run(print_events(settings, follow=args.follow, system=args.system, event_type=args.type))


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config or os.environ.get(config.CONFIG_ENV) or config.DEFAULT_CONFIG)
    try:
        for line in starter.write(path, interactive=sys.stdin.isatty()):
            print(line)
    except FileExistsError:
        raise UsageError(f"{path} exists; not overwriting it") from None
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from arq import create_pool
    from arq.connections import RedisSettings

    from pkrelay.since import parse_since
    from pkrelay.store.deliveries import replay

    if not (args.event_ids or args.since or args.dead):
        raise UsageError("name EVENT_IDs, or give --since TIME or --dead")
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UsageError(f"--since {exc}") from None
    _, settings = _load(args, "replay")
    redis_url = _running_redis(settings, "replay")

    async def go() -> int:
        from pkrelay.store.eventlog import missing_ids

        engine = db.create_engine(settings.database_url)
        if args.event_ids and (missing := await missing_ids(engine, args.event_ids)):
            await engine.dispose()
            raise UsageError(f"no such event: {', '.join(missing)} (nothing was replayed)")
        redis = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            return await replay(engine, redis, settings.sinks, event_ids=args.event_ids, since=since,
                                dead=args.dead)
        finally:
            await redis.aclose()
            await engine.dispose()

    print(f"queued {asyncio.run(go())} deliveries")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    from pkrelay.store.deliveries import listing

    if not 1 <= args.limit <= 1000:
        raise UsageError(f"--limit {args.limit}: must be from 1 to 1000")
    _, settings = _load(args, "deliveries")

    async def go() -> list[bytes]:
        engine = db.create_engine(settings.database_url)
        try:
            return [msgspec.json.encode(d) for d in await listing(engine, args.state, args.sink, args.limit)]
        finally:
            await engine.dispose()

    lines = asyncio.run(go())
    for line in lines:
        print(line.decode())
    if not lines:  # on stderr: stdout stays JSON lines only
        print(f"no deliveries in state {args.state}" + (f" of sink {args.sink}" if args.sink else ""), file=sys.stderr)
    return 0


def cmd_sinks(args: argparse.Namespace) -> int:
    from pkrelay import sinks_cli

    _, settings = _load(args, "sinks")
    if args.action == "list":
        return sinks_cli.run(args, settings, None)
    if settings.sink(args.name) is None:
        raise UsageError(f"no configured sink named {args.name!r} (`pkrelay sinks list` names them)")
    return sinks_cli.run(args, settings, _running_redis(settings, "sinks enable"))


def cmd_backfill(args: argparse.Namespace) -> int:
    from workers.backfill import BackfillError, backfill

    _, settings = _load(args, "backfill")
    systems = [s for s in settings.systems if args.system in (None, s.name, s.system_id)]
    if not systems:
        raise UsageError(f"no configured system named {args.system!r}" if args.system else "no systems configured")
    redis_url = _running_redis(settings, "backfill")

    async def go() -> int:
        redis = queue.connect(redis_url, timeout=5)
        try:
            await db.migrate_url(settings.database_url)
            return await backfill(settings, redis, systems)
        finally:
            await redis.aclose()

    try:
        calls = asyncio.run(go())
    except BackfillError as exc:
        print(f"pkrelay backfill: {exc}", file=sys.stderr)
        return 1
    print(f"done: {calls} API calls")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pkrelay", description="PluralKit events, enriched, signed, delivered.")
    parser.add_argument("--version", action="version", version=f"pkrelay {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (default ./pkrelay.toml or $PKRELAY_CONFIG)")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log everything (log_level = \"debug\"): every job, HTTP request, migration step")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, Callable[[argparse.Namespace], int], str]] = [
        ("run", cmd_run, "everything on one machine: embedded Redis, receiver, one worker"),
        ("serve", cmd_serve, "the receiver alone (needs redis.url)"),
        ("worker", cmd_worker, "one arq worker alone (needs redis.url)"),
        ("migrate", cmd_migrate, "bring the database schema up to date"),
        ("check", cmd_check, "validate the config and reach Redis, the database and the API"),
        ("events", cmd_events, "print the event log"),
        ("replay", cmd_replay, "deliver stored events to the sinks again, with the same ids"),
        ("deliveries", cmd_deliveries, "list deliveries: the dead-lettered ones, or another state"),
        ("sinks", cmd_sinks, "each sink's health (`sinks list`); resume a disabled one (`sinks enable NAME`)"),
        ("backfill", cmd_backfill, "take a full snapshot of each system through the API"),
        ("init", cmd_init, "write a commented starter pkrelay.toml (never overwrites)"),
    ]
    for name, func, help_text in commands:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        if name in ("events", "backfill"):
            p.add_argument("--system", help="system name or UUID")
        if name == "events":
            p.add_argument("--follow", action="store_true", help="keep printing new events")
            p.add_argument("--type", help="event type, e.g. CREATE_SWITCH")
        if name == "replay":
            p.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
            p.add_argument("--since", metavar="TIME", help="every event received since TIME: ISO 8601 with a "
                           "zone, or a duration back from now (30s, 10m, 2h, 1d)")
            p.add_argument("--dead", action="store_true", help="every dead-lettered delivery")
        if name == "sinks":
            from pkrelay import sinks_cli

            sinks_cli.add_arguments(p)
        if name == "deliveries":
            p.add_argument("--state", choices=["dead", "pending", "delivered", "skipped"], default="dead",
                           help="which deliveries (default: dead-lettered)")
            p.add_argument("--sink", help="one sink, by name")
            p.add_argument("--limit", type=int, default=100, help="at most this many, newest event first")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except config.ConfigError as exc:
        print(f"pkrelay: config error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"pkrelay {args.command}: {exc}", file=sys.stderr)
        return 2
    except (startup.StartupError, RedisServerError) as exc:
        print(f"pkrelay {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
