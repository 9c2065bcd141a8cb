"""Polling: the same events as dispatches, for what webhooks never said.

PluralKit never retries a dispatch, some changes send none at all (group membership,
everything `pk;import` writes), and some deployments have no public URL. An arq cron
job ticks every second on exactly one worker (arq runs each cron slot once); per
system a Redis lease keeps one poll at a time, whatever the number of workers, and
expires if its worker dies. Each tick runs the checks that are due:

| check    | poll cadence (s, at poll_budget 1) | auto (reconciliation) |
|----------|------------------------------------|-----------------------|
| fronters | 2                                  | 60                    |
| switches | 5                                  | 100                   |
| members  | 10                                 | 100                   |
| groups   | 10                                 | 100                   |
| system   | 20                                 | 100 (also checks `webhook_url`) |
| settings | 20                                 | 100                   |

Poll cadences sum to 1 GET/s and scale with `pluralkit.poll_budget`; all calls go
through the shared limiter with enrichment. An `auto` system whose `webhook_url` no
longer points at `server.public_url`, or that shows a sign of lost events, is polled
at the poll cadence until that clears.

Each answer is compared with the state store under the system's ingest lock, after
every pending dispatch is logged: what a dispatch already reported is in the store
and yields nothing; anything else becomes an event with `source: "poll"`, PluralKit's
type name and only the changed keys in `data`. A kind never seen before is recorded
as a baseline and yields nothing.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge
from redis.exceptions import LockError

from pkrelay import queue, status
from pkrelay.config import SystemConfig
from pkrelay.envelope import Event, new_event_id
from pkrelay.pluralkit import errors
from pkrelay.pluralkit.client import PluralKitClient
from workers import state
from workers.api import client_for
from workers.enrich import apply, full_switch
from workers.record import record

log = logging.getLogger("pkrelay.poll")

POLL_CYCLES = Counter("pkrelay_poll_cycles_total", "Poll checks run", ["system", "check"])
POLL_CHANGES = Counter("pkrelay_poll_changes_total", "Changes found by polling", ["system", "type"])
POLL_CALLS = Counter("pkrelay_poll_api_calls_total", "API calls spent by polling", ["system"])
WEBHOOK_REGISTERED = Gauge("pkrelay_webhook_registered", "1 while PluralKit's webhook_url points at public_url",
                           ["system"], multiprocess_mode="mostrecent")

POLL_CADENCE = {"fronters": 2.0, "switches": 5.0, "members": 10.0, "groups": 10.0, "system": 20.0, "settings": 20.0}
# Every check within SPEC's two minutes for recovering a lost dispatch, with room for
# the tick and the work.
AUTO_CADENCE = {"fronters": 60.0, "switches": 100.0, "members": 100.0, "groups": 100.0, "system": 100.0,
                "settings": 100.0}
# Keys that change on their own (every proxied message) and that PluralKit never dispatches.
VOLATILE = frozenset({"message_count", "last_message_timestamp", "webhook_url"})
# A dead poller's lease lapses this long after its last call; each call renews it.
LEASE_S = 15


def _key(system: SystemConfig, what: str) -> str:
    return status.poll_key(system.name, what)


async def reconcile_soon(redis: Any, system: str) -> None:
    """A sign of lost events: every check of this system is due at the next tick."""
    await redis.delete(status.poll_key(system, "next"))


async def cadence(redis: Any, system: SystemConfig, budget: float) -> dict[str, float] | None:
    if system.mode == "webhook":
        return None
    if system.mode == "poll" or await redis.exists(_key(system, "unregistered")):
        return {check: seconds / budget for check, seconds in POLL_CADENCE.items()}
    return AUTO_CADENCE


async def poll_tick(ctx: dict[str, Any], now: float | None = None) -> int:
    """Run the due checks of every system; returns the events emitted."""
    emitted = 0
    settings = ctx["live"].current
    for system in settings.systems:
        emitted += await poll_system(ctx, system, now)
    return emitted


async def poll_system(ctx: dict[str, Any], system: SystemConfig, now: float | None = None) -> int:
    redis = ctx["redis"]
    plan = await cadence(redis, system, ctx["live"].current.pluralkit.poll_budget)
    if plan is None or not system.system_id and not system.api_token:
        return 0
    lease = redis.lock(_key(system, "lease"), timeout=LEASE_S)
    if not await lease.acquire(blocking=False, token=_holder()):
        return 0  # another worker polls this system right now
    try:
        now = time.time() if now is None else now
        due_at = {k.decode(): float(v) for k, v in (await redis.hgetall(_key(system, "next"))).items()}
        # Ticks come once a second, give or take: a check due before the next tick runs now.
        due = [check for check in plan if due_at.get(check, 0) <= now + 0.5]
        if not due:
            return 0
        # Next time from when it was due, not from now: the average interval stays the
        # cadence however the ticks fall, so the budget holds on average.
        await redis.hset(_key(system, "next"), mapping={
            c: due_at[c] + plan[c] if now - plan[c] < due_at.get(c, 0) else now + plan[c] for c in due})
        client = client_for(ctx, system)
        ref = system.system_id or "@me"
        fetched: dict[str, Any] = {}
        for check in due:
            try:
                await lease.reacquire()  # a fresh LEASE_S for each call, however long the last one took
            except LockError:
                log.warning("poll of %s outlasted its lease; another worker polls it now", system.name)
                return 0
            try:
                fetched[check] = await FETCHERS[check](client, ref)
            except errors.Forbidden:
                continue  # private without a token: nothing to see
            except errors.PluralKitError as exc:
                log.warning("poll of %s %s failed: %s", system.name, check, exc)
                continue
            finally:
                POLL_CYCLES.labels(system.name, check).inc()
                POLL_CALLS.labels(system.name).inc()
                await status.count_call(redis, system.name)
        await redis.set(_key(system, "last"), str(now))
        emitted = await _apply(ctx, system, fetched)
        if "system" in fetched and system.api_token:
            await _check_webhook(ctx, system, fetched["system"], now)
        return emitted
    finally:
        await release(lease)


def _holder() -> str:
    """A lease token naming its worker (host:pid), for whoever looks at the key."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def release(lock: Any) -> None:
    try:
        await lock.release()
    except LockError:  # expired: another worker may hold it now, which is fine
        pass


def _as_dict(value: Any) -> Any:
    return msgspec.to_builtins(value)


async def _fronters(client: PluralKitClient, ref: str) -> Any:
    return _as_dict(await client.fronters(ref)) or {"members": []}


FETCHERS: dict[str, Callable[[PluralKitClient, str], Awaitable[Any]]] = {
    "fronters": _fronters,
    "switches": lambda c, ref: _wrap(c.switches(ref, limit=100)),
    "members": lambda c, ref: _wrap(c.members(ref)),
    "groups": lambda c, ref: _wrap(c.groups(ref, with_members=True)),
    "system": lambda c, ref: _wrap(c.system(ref)),
    "settings": lambda c, ref: _wrap(c.settings(ref)),
}


async def _wrap(call: Awaitable[Any]) -> Any:
    return _as_dict(await call)


async def _check_webhook(ctx: dict[str, Any], system: SystemConfig, fetched: dict[str, Any], now: float) -> None:
    """Is PluralKit still sending this system's webhooks here? If not, poll as if in
    `poll` mode (from the next tick on) until it is again."""
    public_url = ctx["live"].current.server.public_url
    if not public_url or "webhook_url" not in fetched:
        return
    redis, flag = ctx["redis"], _key(system, "unregistered")
    registered = fetched.get("webhook_url") == public_url
    WEBHOOK_REGISTERED.labels(system.name).set(int(registered))
    was_registered = not await redis.exists(flag)
    if registered == was_registered:
        return
    if registered:
        log.info("system %s: webhooks reach %s again; back to reconciliation", system.name, public_url)
        await redis.delete(flag)
        await redis.hset(_key(system, "next"), mapping={c: now + s for c, s in AUTO_CADENCE.items()})
    else:
        log.warning("system %s: PluralKit no longer sends webhooks to %s; polling at the poll cadence",
                    system.name, public_url)
        await redis.set(flag, b"1")
        await redis.delete(_key(system, "next"))


def _uuids(switch: dict[str, Any]) -> list[Any]:
    return [m.get("uuid", m.get("id")) for m in switch.get("members", [])]


def _created_switch(switch: dict[str, Any]) -> dict[str, Any]:
    """CREATE_SWITCH `data` as PluralKit dispatches it: members by UUID."""
    return {"id": switch["id"], "timestamp": switch.get("timestamp"), "members": _uuids(switch)}


def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in new.items() if k not in VOLATILE and old.get(k) != v}


async def _apply(ctx: dict[str, Any], system: SystemConfig, fetched: dict[str, Any]) -> int:
    """Diff against the store under the system's ingest lock, after pending dispatches."""
    redis = ctx["redis"]
    lock = redis.lock(f"pkrelay:lock:{system.name}", timeout=60, sleep=0.01)
    if not await lock.acquire(blocking_timeout=5):
        return 0
    try:
        if await redis.zcard(queue.pending_key(system.name)):
            return 0  # dispatches still to log would look like our changes: next time
        system_id = system.system_id or (fetched.get("system") or {}).get("uuid")
        if not system_id:
            return 0
        async with ctx["engine"].connect() as conn:
            diff = Diff(system_id)
            await diff.run(conn, fetched)
        if diff.quiet:
            async with ctx["engine"].begin() as conn:
                await apply(conn, system_id, diff.quiet)
        if not diff.events:
            return 0
        new = await record(ctx, system.name, diff.events)
        for event, _ in diff.events:
            POLL_CHANGES.labels(system.name, event.type).inc()
        return len(new)
    finally:
        await release(lock)


class Diff:
    """What the API says against what the store holds: events, and quiet state writes
    (a first sight of something, recorded as the baseline)."""

    def __init__(self, system_id: str) -> None:
        self.system_id = system_id
        self.now = datetime.now(UTC)
        self.events: list[tuple[Event, list[state.Write]]] = []
        self.quiet: list[state.Write] = []

    def emit(self, event_type: str, entity_id: str | None, data: Any, entity: Any, previous: Any,
             writes: list[state.Write]) -> None:
        event = Event(id=new_event_id(), type=event_type, source="poll", system_id=self.system_id,
                      entity_id=entity_id, received_at=self.now, data=data, entity=entity, previous=previous)
        self.events.append((event, writes))

    async def run(self, conn: Any, fetched: dict[str, Any]) -> None:
        for kind, event_type in (("system", "UPDATE_SYSTEM"), ("settings", "UPDATE_SETTINGS")):
            if kind in fetched:
                await self.single(conn, kind, event_type, fetched[kind])
        for kind, noun in (("members", "MEMBER"), ("groups", "GROUP")):
            if kind in fetched:
                await self.collection(conn, kind[:-1], noun, fetched[kind])
        if "fronters" in fetched:
            await self.fronters(conn, fetched["fronters"])
        if fetched.get("switches"):
            members = {**await state.all_of(conn, self.system_id, "member"),
                       **{m["uuid"]: m for m in fetched.get("members", [])}}
            listed = [full_switch(sw, members.values()) for sw in fetched["switches"]]
            await self.switches(conn, listed, (fetched.get("fronters") or {}).get("id"))

    async def single(self, conn: Any, kind: str, event_type: str, entity: dict[str, Any]) -> None:
        stored = await state.get(conn, kind, self.system_id)
        writes: list[state.Write] = [(kind, self.system_id, entity, self.now)]
        changed = _changed(stored.data, entity) if stored else {}
        if stored is None:
            self.quiet += writes
        elif changed:
            self.emit(event_type, None, changed, entity, stored.data, writes)

    async def collection(self, conn: Any, kind: str, noun: str, entities: list[dict[str, Any]]) -> None:
        stored_all = await state.all_of(conn, self.system_id, kind)
        first_sight = not stored_all
        current = {e["uuid"]: e for e in entities}
        for uuid, entity in current.items():
            before = stored_all.get(uuid)
            writes: list[state.Write] = [(kind, uuid, entity, self.now)]
            if before is None:
                if first_sight:
                    self.quiet += writes
                else:
                    self.emit(f"CREATE_{noun}", uuid, entity, entity, None, writes)
                continue
            changed = _changed(before, entity)
            members = changed.pop("members", None) if noun == "GROUP" else None
            if changed:
                self.emit(f"UPDATE_{noun}", uuid, changed, entity, before, writes)
            if members is not None:  # no dispatch exists for this: only polling sees it
                self.emit("UPDATE_GROUP_MEMBERS", uuid, {"members": members}, entity, before, writes)
        for uuid, before in stored_all.items():
            if uuid not in current:
                self.emit(f"DELETE_{noun}", uuid, None, None, before, [(kind, uuid, None, None)])

    async def fronters(self, conn: Any, front: dict[str, Any]) -> None:
        stored = await state.get(conn, "fronters", self.system_id)
        switch_id = front.get("id")
        writes: list[state.Write] = [("fronters", self.system_id, front, self.now)]
        if switch_id:
            writes.append(("switch", switch_id, front, self.now))
        members = _uuids(front)
        if stored is None:
            self.quiet += writes
        elif stored.data.get("id") != switch_id:
            if switch_id and await state.get(conn, "switch", switch_id) is None:
                self.emit("CREATE_SWITCH", switch_id, _created_switch(front), front, None, writes)
            else:
                self.quiet += writes
        else:
            changed: dict[str, Any] = {}
            if _uuids(stored.data) != members:
                changed["members"] = members
            if stored.data.get("timestamp") != front.get("timestamp"):
                changed["timestamp"] = front.get("timestamp")
            if changed:
                self.emit("UPDATE_SWITCH", switch_id, changed, front, stored.data, writes)

    async def switches(self, conn: Any, listed: list[dict[str, Any]], current_id: str | None) -> None:
        """Front history: switches logged in the past or deleted, seen in the newest 100."""
        stored = await state.all_of(conn, self.system_id, "switch")
        by_id = {s["id"]: s for s in listed}
        if not stored:
            self.quiet += [("switch", sid, sw, self.now) for sid, sw in by_id.items()]
            return
        emitted = {e.entity_id for e, _ in self.events}
        for sid, sw in by_id.items():
            if sid not in stored and sid != current_id and sid not in emitted:
                self.emit("CREATE_SWITCH", sid, _created_switch(sw), sw, None, [("switch", sid, sw, self.now)])
        oldest = min(s["timestamp"] for s in listed)
        for sid, before in stored.items():
            if sid not in by_id and sid != current_id and str(before.get("timestamp", "")) >= oldest:
                self.emit("DELETE_SWITCH", sid, None, None, before, [("switch", sid, None, None)])
