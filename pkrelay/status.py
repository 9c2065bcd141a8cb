"""What each system is doing: shared by `/api/systems` and `pkrelay check`.

The poller writes its bookkeeping under its Redis keys (pkrelay.keys); the receiver
and the CLI only read them.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from pkrelay import db, keys, pins
from pkrelay.config import Settings


async def systems(settings: Settings, engine: AsyncEngine, redis: Redis) -> list[dict[str, Any]]:
    e = db.events
    async with engine.connect() as conn:
        last = dict((await conn.execute(
            sa.select(e.c.system, sa.func.max(e.c.received_at)).where(e.c.source == "dispatch").group_by(e.c.system)
        )).all())
    minute = int(time.time() // 60) - 1
    learned = await pins.learned(redis)
    out = []
    for system in settings.systems:
        unregistered = await redis.exists(keys.poll(system.name, "unregistered"))
        last_poll = await redis.get(keys.poll(system.name, "last"))
        calls = int(await redis.get(keys.poll_calls(system.name, minute)) or 0)
        seen = last.get(system.name)
        out.append({
            "name": system.name,
            "system_id": pins.pinned(system, learned),
            "dispatch_url": settings.dispatch_url(system),
            "mode": system.mode,
            "polling": "none" if system.mode == "webhook" else
                       "poll cadence" if system.mode == "poll" or unregistered else "reconciliation",
            "webhook": "not registered here" if unregistered else
                       "unknown" if not (settings.server.public_url and system.api_token) else "registered",
            "api_token": "not set" if not system.api_token else
                         "rejected" if await redis.exists(keys.poll(system.name, "token_rejected")) else "ok",
            "last_dispatch": seen.isoformat() if seen else None,
            "last_poll": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(last_poll))) if last_poll else None,
            "poll_gets_per_second": round(calls / 60, 3),
            "poll_budget": settings.pluralkit.poll_budget,
        })
    return out
