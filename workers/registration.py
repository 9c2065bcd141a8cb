"""Is PluralKit still sending a system's webhooks here?

PluralKit never says when an owner clears or replaces the webhook URL; the owner's
`GET /systems/@me` shows the current `webhook_url`. While it points elsewhere, an
`auto` system is polled at the poll cadence.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Gauge
from redis.asyncio import Redis

from pkrelay import keys
from pkrelay.config import SystemConfig
from pkrelay.store.state import Kind
from workers.schedule import AUTO_CADENCE, due_at

log = logging.getLogger("pkrelay.poll")

WEBHOOK_REGISTERED = Gauge("pkrelay_webhook_registered", "1 while PluralKit's webhook_url points at public_url",
                           ["system"], multiprocess_mode="mostrecent")


async def check(redis: Redis, urls: tuple[str, ...], system: SystemConfig, fetched: dict[str, Any],
                now: float) -> None:
    """Compare the fetched system's `webhook_url` with the URLs that reach this system
    (`Settings.dispatch_urls`); on a change, switch the system's polling cadence from the
    next tick on. A WARNING only when it changes from registered to not: the first check
    of a system never registered is an INFO line saying how to register."""
    if not urls or "webhook_url" not in fetched:
        return
    public_url = urls[0]
    flag = keys.poll(system.name, "unregistered")
    registered = fetched.get("webhook_url") in urls
    WEBHOOK_REGISTERED.labels(system.name).set(int(registered))
    checked = keys.poll(system.name, "webhook_checked")
    first = not await redis.exists(checked)
    was_registered = not await redis.exists(flag)
    if first:
        await redis.set(checked, b"1")
    if registered == was_registered:
        return
    if first:  # never registered: nothing changed, nothing was lost; say what to do, once
        log.info("system %s: PluralKit does not send webhooks to %s (yet: `pk;system webhook %s`); polling at the "
                 "poll cadence", system.name, public_url, public_url)
        await redis.set(flag, b"1")
        await due_at(redis, system.name, dict.fromkeys(Kind, now + 1))  # the next tick
    elif registered:
        log.info("system %s: webhooks reach %s again; back to reconciliation", system.name, public_url)
        await redis.delete(flag)
        await due_at(redis, system.name, {c: now + s for c, s in AUTO_CADENCE.items()})
    else:
        log.warning("system %s: PluralKit no longer sends webhooks to %s; polling at the poll cadence",
                    system.name, public_url)
        await redis.set(flag, b"1")
        await due_at(redis, system.name, dict.fromkeys(Kind, now + 1))  # the next tick
