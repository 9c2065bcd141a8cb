"""`pkrelay check`: is this deployment able to work? A report, and an exit code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console

from pkrelay import config, db, queue


async def run_checks(path: Path) -> int:
    console = Console(highlight=False)
    problems = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal problems
        problems += not ok
        mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
        console.print(f"{mark} {what}" + (f": {detail}" if detail else ""))

    try:
        settings = config.load(path)
    except config.ConfigError as exc:
        report(False, "config", str(exc))
        return 1
    report(True, "config", f"{path} ({len(settings.systems)} systems, {len(settings.sinks)} sinks)")
    for system in settings.systems:
        if system.mode != "poll" and not system.signing_token:
            report(False, f"system {system.name}", f"mode {system.mode} needs a signing_token for webhooks")
        if not system.system_id and not system.api_token:
            report(False, f"system {system.name}", "needs a system_id or an api_token")

    if settings.redis.url:
        redis = queue.connect(settings.redis.url, timeout=3)
        try:
            await redis.ping()
            report(True, "redis", f"{settings.redis.url.split('@')[-1]}, queue depth {await queue.depth(redis)}")
        except Exception as exc:
            report(False, "redis", f"{type(exc).__name__}: {exc}")
        finally:
            await redis.aclose()
    else:
        report(True, "redis", "embedded server (started by `pkrelay run`)")

    engine = db.create_engine(settings.database_url)
    try:
        async with asyncio.timeout(10):
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        report(True, "database", engine.url.render_as_string(hide_password=True))
    except Exception as exc:
        report(False, "database", f"{type(exc).__name__}: {exc}")
    finally:
        await engine.dispose()

    console.print("[green]all checks passed[/]" if not problems else f"[red]{problems} problem(s)[/]")
    return 1 if problems else 0
