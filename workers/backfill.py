"""`pkrelay backfill`: a full snapshot of each system into the state store, with progress."""

from __future__ import annotations

from redis.asyncio import Redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from pkrelay import db
from pkrelay.config import Settings, SystemConfig
from pkrelay.pluralkit import errors
from pkrelay.pluralkit.client import PluralKitClient
from pkrelay.store import state
from workers.enrich import SNAPSHOT, resync

STEPS = 1 + len(SNAPSHOT)  # the system, then each kind


class BackfillError(Exception):
    """A snapshot that cannot be taken, in one line a user can act on."""


def _explain(system: SystemConfig, exc: errors.PluralKitError) -> BackfillError:
    if isinstance(exc, errors.Unauthorized):
        return BackfillError(f"system {system.name!r}: PluralKit refused its api_token (401): it is wrong or was "
                             "revoked; DM `pk;token` to the bot for the current one")
    if isinstance(exc, errors.NotFound):
        return BackfillError(f"system {system.name!r}: PluralKit knows no system {system.system_id or '@me'!r} (404)")
    return BackfillError(f"system {system.name!r}: the PluralKit API failed: {exc}")


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
                client = PluralKitClient.from_settings(settings.pluralkit, redis, system.api_token.reveal())

                def advance(step: str, task: TaskID = task) -> None:
                    progress.update(task, advance=1, step=step)

                try:
                    result = await resync(client, system.system_id or "@me", advance)
                except errors.PluralKitError as exc:
                    raise _explain(system, exc) from None
                finally:
                    await client.aclose()
                system_id = str(result.entity["uuid"])
                async with engine.begin() as conn:
                    await state.apply(conn, system_id, result.writes)
                progress.update(task, step=f"{len(result.writes) - 3} entities stored")
                calls += result.calls
    finally:
        await engine.dispose()
    return calls
