"""`pkrelay backfill`: a full snapshot of each system into the state store, with progress."""

from __future__ import annotations

from redis.asyncio import Redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pkrelay import db
from pkrelay.config import Settings, SystemConfig
from workers.api import build_client
from workers.enrich import apply, resync

STEPS = 6  # system, settings, fronters, members, groups, switches


async def backfill(settings: Settings, redis: Redis, systems: list[SystemConfig]) -> int:
    """Snapshot every system given; returns the API calls spent."""
    engine = db.create_engine(settings.database_url)
    calls = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[step]}"),
               TimeElapsedColumn())
    try:
        with Progress(*columns) as progress:
            for system in systems:
                task = progress.add_task(system.name, total=STEPS, step="")
                client = build_client(settings, redis, system.api_token.reveal())
                try:
                    ref = system.system_id or "@me"
                    result = await resync(client, ref, lambda step, t=task: progress.update(t, advance=1, step=step))
                finally:
                    await client.aclose()
                system_id = str(result.entity["uuid"])
                async with engine.begin() as conn:
                    await apply(conn, system_id, result.writes)
                progress.update(task, step=f"{len(result.writes) - 3} entities stored")
                calls += result.calls
    finally:
        await engine.dispose()
    return calls
