"""`pkrelay check`: is this deployment able to work? A report, and an exit code."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from redis.exceptions import RedisError
from rich.console import Console

from pkrelay import config, db, queue
from pkrelay.check_sinks import check_sinks
from pkrelay.config import MqttSink
from pkrelay.pluralkit.client import PluralKitClient
from pkrelay.pluralkit.errors import PluralKitError
from pkrelay.redis_server import EmbeddedRedis, running_url


async def _check_api(settings: config.Settings, report: Callable[..., None], members: dict[str, set[str]],
                     complete: set[str]) -> None:
    """One GET per system (two when an MQTT sink names members: `members` gets each
    system's, `complete` the systems read with their api_token), through the same
    limiter the workers use."""
    url = settings.redis.url or running_url(settings.data_path) or ""
    redis = queue.connect(url or "redis://127.0.0.1:9/0", timeout=3)
    scratch = None
    try:
        await redis.ping()
    except (RedisError, OSError):  # none reachable: a throwaway server just for the limiter
        await redis.aclose()
        scratch = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="pkrelay-check-")))
        scratch.start()
        redis = queue.connect(scratch.url, timeout=3)
    try:
        for system in settings.systems:
            token = system.api_token.reveal()
            if not token and not system.system_id:
                continue  # nothing to look up; reported with the config
            client = PluralKitClient.from_settings(settings.pluralkit, redis, token)
            try:
                found = await client.system("@me" if token else system.system_id)
                if any(isinstance(s, MqttSink) and isinstance(s.members, list) and s.members for s in settings.sinks):
                    members[system.name] = {str(v) for m in await client.members("@me" if token else system.system_id)
                                            for v in (m.name, m.display_name, m.id, m.uuid) if v}
                    if token:
                        complete.add(system.name)
            except PluralKitError as exc:
                report(False, f"system {system.name}: API", str(exc))
                continue
            finally:
                await client.aclose()
            if system.system_id and found.uuid != system.system_id:
                report(False, f"system {system.name}: API", f"the api_token belongs to system {found.id}, "
                                                            f"not to system_id {system.system_id}")
            elif token:
                report(True, f"system {system.name}: API", f"token of system {found.id} ({found.uuid})")
                urls = settings.dispatch_urls(system)
                if urls and system.mode != "poll":
                    here = found.webhook_url in urls
                    report(here or system.mode == "auto", f"system {system.name}: webhooks",
                           f"registered at {found.webhook_url}" if here else
                           f"PluralKit does not send them to {urls[0]}"
                           + ("; polling at the poll cadence instead" if system.mode == "auto" else ""))
            else:
                report(True, f"system {system.name}: API", f"system {found.id} reachable; no api_token: "
                                                           "public data only")
    finally:
        await redis.aclose()
        if scratch:
            scratch.stop()


async def run_checks(path: Path) -> int:
    console = Console(highlight=False, soft_wrap=True)
    problems = 0

    def report(ok: bool | None, what: str, detail: str = "") -> None:
        """ok, FAIL, or (None) warn: something to know that does not stop pkrelay working."""
        nonlocal problems
        problems += ok is False
        mark = "[green]ok[/]  " if ok else "[yellow]warn[/]" if ok is None else "[red]FAIL[/]"
        console.print(f"{mark} {what}" + (f": {detail}" if detail else ""))

    try:
        settings = config.load(path)
    except config.ConfigError as exc:
        report(False, "config", str(exc))
        return 1
    report(True, "config", f"{path} ({len(settings.systems)} systems, {len(settings.sinks)} sinks)")
    for system in settings.systems:
        if system.mode == "webhook" and not system.signing_token:
            report(False, f"system {system.name}", "mode webhook needs a signing_token: without one every "
                                                   "dispatch is refused and nothing polls")
        elif system.mode == "auto" and not system.signing_token:
            report(None, f"system {system.name}", "no signing_token yet: dispatches are refused and the system "
                                                  "is polled until one is set (`pkrelay run` reloads it)")
        if not system.system_id and not system.api_token:
            report(False, f"system {system.name}", "api_token is not set and system_id is empty: set one of them "
                                                   "(the api_token also gives private data)")

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

    members: dict[str, set[str]] = {}
    complete: set[str] = set()
    await _check_api(settings, report, members, complete)
    await check_sinks(settings, report, members, complete)
    console.print("[green]all checks passed[/]" if not problems else f"[red]{problems} problem(s)[/]")
    return 1 if problems else 0
