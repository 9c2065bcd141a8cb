"""Polling: the same events as dispatches, for what webhooks never said.

PluralKit never retries a dispatch, some changes send none at all (group membership,
everything `pk;import` writes), and some deployments have no public URL. An arq cron
job ticks every second (arq runs each cron slot on one worker); a tick claims the
checks due now (workers.schedule: a sorted set of due times, so its cost follows what
is due, not the number of systems), runs each system's claimed checks under the
system's poll lease, compares the answers with the store (workers.diff) under the
system's lock, after every pending dispatch is logged, and logs what changed. A worker
runs one tick at a time and polls at most POLL_CONCURRENCY systems at once, so polling
never takes the job slots ingest and delivery need. All calls go through the limiter
shared with enrichment.

Dispatches keep being logged while a poll fetches, so an answer may be older than
the store by the time it is compared. The store is read before the fetch too: an
entity written in between is left out of the diff (only that entity, so a system
that never stops dispatching is still reconciled) and its check runs again soon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from redis.exceptions import LockError, RedisError

from pkrelay import keys
from pkrelay.config import SystemConfig
from pkrelay.pluralkit import errors
from pkrelay.store import state
from pkrelay.store.state import Kind, Snapshot
from pkrelay.system_lock import SystemLock
from workers import fetch, registration, schedule, token
from workers.diff import diff
from workers.record import record
from workers.resources import Resources

log = logging.getLogger("pkrelay.poll")

POLL_CYCLES = Counter("pkrelay_poll_cycles_total", "Poll checks run", ["system", "check"])
POLL_CHANGES = Counter("pkrelay_poll_changes_total", "Changes found by polling", ["system", "type"])
POLL_CALLS = Counter("pkrelay_poll_api_calls_total", "API calls spent by polling", ["system"])

# A check whose answer could not be used runs again this soon.
RECHECK_S = 2.0
# Systems one worker polls at once, all within the tick's one job slot (ingest and
# delivery keep the other 19). A poll mostly waits: its token's limiter spaces its
# calls 105 ms apart, so 8 at once poll about 15 systems a second.
POLL_CONCURRENCY = 8
# A tick claims more work for this long at most, then ends (its cron timeout is 30 s).
TICK_S = 20.0
# How long a poll waits for its system's pending dispatches to be logged before it
# gives its answers up (and checks again soon).
PENDING_WAIT_S = 5.0


async def poll_tick(ctx: dict[str, Any], now: float | None = None) -> int:
    """Run the checks due now (at `now`, for tests); returns the events emitted."""
    res = Resources.of(ctx)
    if res.polling.locked():
        return 0  # this worker's last tick still works through a backlog: it goes on
    async with res.polling:
        if res.scheduled is not res.settings:
            await schedule.sync(res.redis, res.settings)
            res.scheduled = res.settings
        return await _tick(res, now)


async def _tick(res: Resources, now: float | None) -> int:
    """Claim due checks while there is room for them, until none is due or TICK_S passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TICK_S
    slots = asyncio.Semaphore(POLL_CONCURRENCY)
    running: set[asyncio.Task[int]] = set()
    emitted = 0
    try:
        while True:
            room = POLL_CONCURRENCY - len(running)
            if room > 0 and loop.time() < deadline:
                at = time.time() if now is None else now
                claimed = await schedule.claim(res.redis, at, room * len(Kind))
                for name, due in claimed.due.items():
                    running.add(asyncio.create_task(_run(res, slots, claimed, name, due, at)))
            if not running:
                return emitted
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            emitted += sum(task.result() for task in done)
    finally:
        for task in running:  # the tick was cancelled (its timeout): so are its polls
            task.cancel()


async def _run(res: Resources, slots: asyncio.Semaphore, claimed: schedule.Claim, name: str,
               due: dict[Kind, float], now: float) -> int:
    """One system's claimed checks; each is then due again at its next time."""
    redis = res.redis
    system = res.settings.system(name)
    if system is None and res.live.catch_up():  # added to the file since our last reload?
        system = res.settings.system(name)
    plan = None if system is None else await schedule.cadence(redis, system, res.settings.pluralkit.poll_budget)
    if system is None or plan is None or not (system.system_id or system.api_token):
        await schedule.finish(redis, claimed, name, dict.fromkeys(due))  # no longer polled
        return 0
    next_due: dict[Kind, float | None] = {
        check: schedule.next_due(name, check, at, now, plan[check]) for check, at in due.items()}
    try:
        async with slots:
            emitted = await poll_system(res, system, [check for check in plan if check in due], now)
        if emitted is None:  # another worker polls this system right now
            next_due = {check: now + RECHECK_S for check in due}
        return emitted or 0
    except Exception:
        log.exception("poll of %s failed", name)
        return 0
    finally:
        try:
            await schedule.finish(redis, claimed, name, next_due)
        except RedisError as exc:  # its claim lapses: due again CLAIM_S after it was taken
            log.warning("poll of %s: could not schedule its next checks: %s", name, exc)


async def poll_system(res: Resources, system: SystemConfig, due: list[Kind], now: float) -> int | None:
    """Run these checks of one system; the events emitted, or None when another
    worker polls it right now."""
    redis = res.redis
    lease = schedule.lease(redis, system.name)
    if not await lease.acquire(blocking=False, token=schedule.holder()):
        return None
    try:
        if not due:
            return 0
        client = res.client(system)
        rejected = bool(system.api_token) and await token.is_rejected(redis, system.name)
        try:
            ref = "@me" if rejected else await res.system_id(system)
        except errors.Unauthorized:
            await token.mark(redis, system.name, True, "401")
            return 0
        except errors.PluralKitError as exc:
            log.warning("poll of %s: cannot tell its system id: %s", system.name, exc)
            return 0
        if rejected:
            due = [Kind.SYSTEM] if Kind.SYSTEM in due else []  # only the token check until it works
        before = None if rejected else await _snapshot(res, ref)
        fetched: dict[Kind, Any] = {}
        unauthorized = False
        for check in due:
            try:
                await lease.reacquire()  # a fresh lease for each call, however long the last one took
            except LockError:
                log.warning("poll of %s outlasted its lease; another worker polls it now", system.name)
                return 0
            try:
                answer = fetch.as_data(await fetch.everything(client, check, ref))
                fetched[check] = answer if answer is not None or check != Kind.FRONTERS else {"members": []}
            except errors.Forbidden:
                continue  # private without a token: nothing to see
            except errors.Unauthorized:
                unauthorized = True
                break
            except errors.PluralKitError as exc:
                log.warning("poll of %s %s failed: %s", system.name, check, exc)
                continue
            finally:
                POLL_CYCLES.labels(system.name, check).inc()
                POLL_CALLS.labels(system.name).inc()
                await schedule.count_call(redis, system.name)
        await redis.set(keys.poll(system.name, "last"), str(now))
        if system.api_token and (unauthorized or token.owner_view_lost(fetched)):
            await token.mark(redis, system.name, True, "401" if unauthorized else "answers show public data only")
            return 0
        if rejected:
            if not fetched:
                return 0
            await token.mark(redis, system.name, False)
            ref = await res.system_id(system)
        emitted = await _apply(res, system, ref, fetched, before, now)
        if Kind.SYSTEM in fetched and system.api_token:
            await registration.check(redis, res.settings.dispatch_urls(system), system, fetched[Kind.SYSTEM], now)
        return emitted
    finally:
        await schedule.release(lease)




async def _snapshot(res: Resources, system_id: str) -> Snapshot:
    async with res.engine.connect() as conn:
        return await state.snapshot(conn, system_id)


async def _lock_without_pending(res: Resources, system: SystemConfig) -> SystemLock | None:
    """The system's lock, taken while no dispatch of it waits to be logged (one would
    look like a change found by polling), or None if dispatches kept coming."""
    lock = SystemLock(res.redis, system.name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PENDING_WAIT_S
    while await lock.acquire(blocking_timeout=5):
        if not await res.redis.zcard(keys.pending(system.name)):
            return lock
        await schedule.release(lock)  # the workers logging them need it
        if loop.time() > deadline:
            return None
        await asyncio.sleep(0.05)
    return None


async def _apply(res: Resources, system: SystemConfig, system_id: str, fetched: dict[Kind, Any],
                 before: Snapshot | None, now: float) -> int:
    """Diff against the store under the system's ingest lock, after pending dispatches,
    leaving out what dispatches wrote since `before` (read before the fetch)."""
    lock = await _lock_without_pending(res, system)
    if lock is None:
        await schedule.due_soon(res.redis, system.name, set(fetched), now, RECHECK_S)
        return 0
    try:
        stored = await _snapshot(res, system_id)
        moved = stored.moved_since(before) if before is not None else set()
        await schedule.due_soon(res.redis, system.name, {kind for kind, _ in moved} & set(fetched), now, RECHECK_S)
        changes = diff(system_id, stored, fetched, datetime.now(UTC), moved)
        if changes.quiet:
            async with res.engine.begin() as conn:
                await state.apply(conn, system_id, changes.quiet)
        if not changes.events:
            return 0
        new = await record(res, system.name, changes.events)
        for event, _ in changes.events:
            POLL_CHANGES.labels(system.name, event.type).inc()
        return len(new)
    finally:
        await schedule.release(lock)
