"""What the dashboard pages show, read from the database, Redis and the spool.

Nothing here returns a secret: tokens become booleans ("set" / "not set") and sink
URLs only their host (a URL can carry a secret, e.g. a Home Assistant webhook id).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import msgspec
import sqlalchemy as sa
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncConnection

from pkrelay import db, labels, queue, status
from pkrelay.config import Settings, Sink
from pkrelay.envelope import Event
from pkrelay.store import eventlog, front
from receiver.relay import Relay

_HEX = re.compile(r"^[0-9a-fA-F]{6}$")


def sink_label(settings: Settings, sink: Sink) -> str:
    """How the dashboard names a sink: its metrics label (name, or sink<N>), type and
    host, never the whole URL."""
    host = urlsplit(sink.url).hostname or "?"
    return f"{labels.sink_label(settings, sink)} ({sink.__struct_config__.tag} to {host})"


def _colour(value: Any) -> str | None:
    return f"#{value}" if isinstance(value, str) and _HEX.match(value) else None


def _avatar(value: Any) -> str | None:
    """https images only: the pages' Content-Security-Policy loads no other remote image."""
    return value if isinstance(value, str) and value.startswith("https://") else None


def fronter_view(member: Any) -> dict[str, Any]:
    m = member if isinstance(member, dict) else {"id": str(member)}
    return {"name": m.get("display_name") or m.get("name") or m.get("id") or "?",
            "colour": _colour(m.get("color")), "avatar": _avatar(m.get("avatar_url"))}


def _key(member: dict[str, Any]) -> str:
    return str(member.get("uuid") or member.get("id"))


async def front_view(conn: AsyncConnection, system_id: str) -> dict[str, Any]:
    """Who fronts, since when, and the last switches with who came in and who left."""
    current = await front.current(conn, system_id)
    last = await front.switches(conn, system_id, 6)
    history = []
    for newer, older in zip(last, [*last[1:], None], strict=False):  # the oldest: nothing before it
        before = {_key(m) for m in older.members} if older else set()
        after = {_key(m) for m in newer.members}
        history.append({"at": newer.at, "event_id": newer.event_id,
                        "came": [fronter_view(m) for m in newer.members if _key(m) not in before],
                        "left": [fronter_view(m) for m in older.members if _key(m) not in after] if older else [],
                        "first": older is None})
    since = current.since if current and current.since else (last[0].at if last else None)
    return {"fronters": None if current is None else [fronter_view(m) for m in current.members],
            "since": since, "switches": history[:5]}


async def _system_uuids(conn: AsyncConnection, settings: Settings) -> dict[str, str | None]:
    """Each system's UUID: configured, or the one its latest event named."""
    return {system.name: system.system_id or await eventlog.latest_system_id(conn, system.name)
            for system in settings.systems}


async def sink_stats(relay: Relay) -> list[dict[str, Any]]:
    d, a = db.deliveries, db.delivery_attempts
    since = datetime.now(UTC) - timedelta(hours=24)
    async with relay.engine.connect() as conn:
        counts = (await conn.execute(sa.select(d.c.sink, d.c.status, sa.func.count()).group_by(d.c.sink, d.c.status)))
        by_status: dict[str, dict[str, int]] = {}
        for sink, state, n in counts.all():
            by_status.setdefault(sink, {})[state] = n
        failing: dict[str, int] = dict((await conn.execute(sa.select(d.c.sink, sa.func.count()).where(
            d.c.status == "pending", d.c.attempts > 0).group_by(d.c.sink))).all())
        last_ok = dict((await conn.execute(
            sa.select(d.c.sink, sa.func.max(d.c.delivered_at)).group_by(d.c.sink))).all())
        failures: dict[str, int] = dict((await conn.execute(sa.select(a.c.sink, sa.func.count()).where(
            a.c.error.is_not(None), a.c.at >= since).group_by(a.c.sink))).all())
        health = {r.key: r for r in (await conn.execute(sa.select(db.sinks))).all()}
    out = []
    for sink in relay.live.current.sinks:
        counts_of = by_status.get(sink.key, {})
        out.append({
            "key": sink.key, "label": sink_label(relay.live.current, sink), "type": sink.__struct_config__.tag,
            "pending": counts_of.get("pending", 0), "dead": counts_of.get("dead", 0),
            "delivered": counts_of.get("delivered", 0), "failing": failing.get(sink.key, 0),
            "failures_24h": failures.get(sink.key, 0),
            "last_success": last_ok.get(sink.key),
            "disabled": health[sink.key].state == "disabled" if sink.key in health else False,
            "disabled_reason": health[sink.key].disabled_reason if sink.key in health else None,
            "disabled_at": health[sink.key].disabled_at if sink.key in health else None,
        })
    return out


async def overview(relay: Relay) -> dict[str, Any]:
    settings = relay.live.current
    systems = await status.systems(settings, relay.engine, relay.redis)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    e = db.events
    async with relay.engine.connect() as conn:
        uuids = await _system_uuids(conn, settings)
        recent: dict[str, int] = dict((await conn.execute(sa.select(e.c.system, sa.func.count()).where(
            e.c.received_at >= hour_ago).group_by(e.c.system))).all())
        fronts = {name: await front_view(conn, uuid) for name, uuid in uuids.items() if uuid}
    configured = {s.name: s for s in settings.systems}
    for row in systems:
        system = configured[row["name"]]
        row |= {
            "uuid": uuids.get(row["name"]), "signing_token": bool(system.signing_token),
            "events_last_hour": recent.get(row["name"], 0),
            **fronts.get(row["name"], {"fronters": None, "since": None, "switches": []}),
        }
    try:
        depth: int | None = await queue.depth(relay.redis)
    except (RedisError, OSError):
        depth = None
    return {"systems": systems, "sinks": await sink_stats(relay), "queue_depth": depth,
            "spool_depth": len(relay.spool.files()), "rendered_at": datetime.now(UTC)}


async def events(relay: Relay, system: str | None, event_type: str | None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest events, newest first, with the configured system name of each."""
    e = db.events
    stmt = eventlog.matching(sa.select(e.c.id, e.c.type, e.c.source, e.c.system, e.c.system_id, e.c.entity_id,
                                       e.c.received_at), system, event_type)
    async with relay.engine.connect() as conn:
        rows = (await conn.execute(stmt.order_by(e.c.id.desc()).limit(limit))).all()
    return [{**r._asdict(), "received_at": r.received_at} for r in rows]


async def newest_logged(relay: Relay, system: str | None, event_type: str | None) -> str | None:
    """The id of the event logged last among those matching, where a live page resumes."""
    e = db.events
    stmt = eventlog.matching(sa.select(e.c.id).where(e.c.logged_at.is_not(None)), system, event_type)
    async with relay.engine.connect() as conn:
        return (await conn.execute(stmt.order_by(e.c.logged_at.desc(), e.c.id.desc()).limit(1))).scalar()


async def event_types(relay: Relay) -> list[str]:
    async with relay.engine.connect() as conn:
        return sorted((await conn.execute(sa.select(db.events.c.type).distinct())).scalars())


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def diff(previous: Any, entity: Any) -> list[dict[str, Any]]:
    """Key by key: what `previous` held, what `entity` holds, and whether it changed."""
    if not isinstance(previous, dict) and not isinstance(entity, dict):
        return []
    before = previous if isinstance(previous, dict) else {}
    after = entity if isinstance(entity, dict) else {}
    keys = list(after) + [k for k in before if k not in after]
    return [{"key": k, "before": _pretty(before[k]) if k in before else "",
             "after": _pretty(after[k]) if k in after else "", "changed": before.get(k, ...) != after.get(k, ...)}
            for k in keys]


async def event_detail(relay: Relay, event_id: str) -> dict[str, Any] | None:
    e, d, a = db.events, db.deliveries, db.delivery_attempts
    async with relay.engine.connect() as conn:
        row = (await conn.execute(sa.select(e).where(e.c.id == event_id))).first()
        if row is None:
            return None
        deliveries = (await conn.execute(sa.select(d).where(d.c.event_id == event_id).order_by(d.c.sink))).all()
        attempts = (await conn.execute(sa.select(a).where(a.c.event_id == event_id).order_by(a.c.at, a.c.id))).all()
    event: Event = eventlog.row_to_event(row)
    labels = {s.key: sink_label(relay.live.current, s) for s in relay.live.current.sinks}
    sinks = [{"key": dv.sink, "label": labels.get(dv.sink, f"{dv.sink} (no longer configured)"),
              "status": dv.status, "last_error": dv.last_error,
              "attempts": [{"at": t.at, "status_code": t.status_code, "error": t.error,
                            "duration_ms": t.duration_ms} for t in attempts if t.sink == dv.sink]}
             for dv in deliveries]
    return {"event": event, "system": row.system, "logged_at": row.logged_at,
            "envelope": _pretty(event), "data": _pretty(event.data), "diff": diff(event.previous, event.entity),
            "sinks": sinks}


async def problem_deliveries(relay: Relay, limit: int = 200) -> list[dict[str, Any]]:
    """Per sink: its dead letters and its failing (still retrying) deliveries."""
    d, e = db.deliveries, db.events
    out, stats_of = [], await sink_stats(relay)
    async with relay.engine.connect() as conn:
        for stats in stats_of:
            rows = (await conn.execute(
                sa.select(d.c.event_id, d.c.status, d.c.attempts, d.c.last_attempt_at, d.c.last_error, e.c.type,
                          e.c.system)
                .join(e, e.c.id == d.c.event_id)
                .where(d.c.sink == stats["key"], sa.or_(d.c.status == "dead",
                                                        sa.and_(d.c.status == "pending", d.c.attempts > 0)))
                .order_by(d.c.event_id.desc()).limit(limit))).all()
            out.append({**stats,
                        "dead_letters": [r for r in rows if r.status == "dead"],
                        "failing_rows": [r for r in rows if r.status == "pending"]})
    return out
