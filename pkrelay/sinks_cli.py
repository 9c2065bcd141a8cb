"""`pkrelay sinks list` and `pkrelay sinks enable NAME`: each sink's health, and resuming
one that was disabled (a 410, or failing for delivery.disable_after_h)."""

from __future__ import annotations

import argparse
import asyncio

import msgspec

from pkrelay import config, db, queue
from pkrelay.store import sinks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="each sink: state (active/disabled, why, since), last success and "
                                              "error, next attempt, deliveries by state (one JSON object a line)")
    enable = actions.add_parser("enable", help="resume a disabled sink and deliver what it held")
    for action in (listing, enable):  # also after the action; SUPPRESS keeps one given before it
        action.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    enable.add_argument("name", metavar="NAME", help="the sink's name (or key, as `pkrelay sinks list` shows it)")


async def list_sinks(settings: config.Settings) -> list[bytes]:
    engine = db.create_engine(settings.database_url)
    try:
        return [msgspec.json.encode(s) for s in await sinks.listing(engine, settings.sinks)]
    finally:
        await engine.dispose()


async def enable(settings: config.Settings, redis_url: str, name: str) -> int:
    """Resume the sink; how many held deliveries were queued."""
    engine = db.create_engine(settings.database_url)
    redis = queue.connect(redis_url, timeout=5)
    try:
        return await sinks.enable(engine, redis, name)
    finally:
        await redis.aclose()
        await engine.dispose()


def run(args: argparse.Namespace, settings: config.Settings, redis_url: str | None) -> int:
    if args.action == "list":
        for line in asyncio.run(list_sinks(settings)):
            print(line.decode())
        return 0
    assert redis_url is not None
    print(f"{args.name}: enabled; queued {asyncio.run(enable(settings, redis_url, args.name))} held deliveries")
    return 0
