"""What each system is doing: shared by `/api/systems` and `pkrelay check`.

The poller writes its bookkeeping under its Redis keys (pkrelay.keys); the receiver
and the CLI only read them, all systems' in one round trip (a pipeline), however
many systems there are.
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
    per_system = 4
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.PINS)
        for system in settings.systems:
            pipe.exists(keys.poll(system.name, "unregistered"))
            pipe.get(keys.poll(system.name, "last"))
            pipe.get(keys.poll_calls(system.name, minute))
            pipe.exists(keys.poll(system.name, "token_rejected"))
        answers = await pipe.execute()
    learned = pins.decoded(answers[0])
    out = []
    for i, system in enumerate(settings.systems):
        unregistered, last_poll, calls_raw, rejected = answers[1 + i * per_system:1 + (i + 1) * per_system]
        calls = int(calls_raw or 0)
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
            "api_token": "not set" if not system.api_token else "rejected" if rejected else "ok",
            "last_dispatch": seen.isoformat() if seen else None,
            "last_poll": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(last_poll))) if last_poll else None,
            "poll_gets_per_second": round(calls / 60, 3),
            "poll_budget": settings.pluralkit.poll_budget,
        })
    return out
