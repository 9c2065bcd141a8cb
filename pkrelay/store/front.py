"""Who fronts and since when, and the last switches, as the event log and state store know them.

Shared by the MQTT switch event (who fronted before the first switch a sink publishes),
the dashboard's overview and `pkrelay status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pkrelay import db
from pkrelay.store import state
from pkrelay.store.state import Kind


@dataclass(frozen=True)
class Switch:
    """One logged CREATE_SWITCH: when (PluralKit's timestamp, else its arrival) and who."""

    event_id: str
    at: datetime
    members: list[dict[str, Any]]  # member records where the event was enriched, else {"uuid": ...}


def _when(value: Any, fallback: datetime) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return fallback


def _members(entity: Any, data: Any) -> list[dict[str, Any]]:
    listed = (entity or {}).get("members") if isinstance(entity, dict) else None
    if not isinstance(listed, list):
        listed = (data or {}).get("members") if isinstance(data, dict) else None
    return [m if isinstance(m, dict) else {"uuid": str(m)} for m in listed or []]


async def switches(conn: AsyncConnection, system_id: str, limit: int = 5) -> list[Switch]:
    """This system's last switches, newest first, with the members named as the store
    knows them now (an event logged without its entity names UUIDs only)."""
    e = db.events
    rows = (await conn.execute(
        sa.select(e.c.id, e.c.received_at, e.c.data, e.c.entity)
        .where(e.c.system_id == system_id, e.c.type == "CREATE_SWITCH").order_by(e.c.id.desc()).limit(limit)
    )).all()
    listed = [(r, _members(r.entity, r.data)) for r in rows]
    uuids = sorted({str(m.get("uuid")) for _, ms in listed for m in ms if m.get("uuid")})
    known = await state.get_many(conn, system_id, Kind.MEMBER, uuids) if uuids else {}
    return [Switch(r.id, _when(_timestamp(r.entity) or _timestamp(r.data), r.received_at),
                   [{**m, **known.get(str(m.get("uuid")), {})} for m in members]) for r, members in listed]


def _timestamp(value: Any) -> Any:
    return value.get("timestamp") if isinstance(value, dict) else None


@dataclass(frozen=True)
class Front:
    """Who fronts now (member records, in order) and since when (None: not known)."""

    members: list[dict[str, Any]]
    since: datetime | None


async def current(conn: AsyncConnection, system_id: str) -> Front | None:
    """The front the state store holds (None: it holds none), with its members as they are now."""
    stored = await state.get(conn, system_id, Kind.FRONTERS, system_id)
    if stored is None:
        return None
    listed = [m if isinstance(m, dict) else {"uuid": str(m)} for m in stored.data.get("members") or []]
    uuids = [str(m.get("uuid")) for m in listed if m.get("uuid")]
    known = await state.get_many(conn, system_id, Kind.MEMBER, uuids) if uuids else {}
    since = _timestamp(stored.data)
    return Front([{**m, **known.get(str(m.get("uuid")), {})} for m in listed],
                 _when(since, datetime.now(UTC)) if since else None)
