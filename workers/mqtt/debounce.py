"""The front of an MQTT sink, waited out while switches come in bursts (`front_debounce_s`).

It exists so that a burst of switches (a fronter logged in and out again, an app
replaying several) publishes one settled front and one switch event, not each step.
The burst's first and last times are in Redis, so whichever worker is still waiting
publishes it; a clean stop publishes what it was waiting for at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from pkrelay import keys
from pkrelay.pluralkit.errors import PluralKitError
from workers.mqtt.connection import MqttUnavailable
from workers.mqtt.projection import Projection

log = logging.getLogger("pkrelay.mqtt")


class FrontDebounce:
    """One sink's fronts being waited out in this process, by system."""

    def __init__(self, projection: Projection, redis: Redis) -> None:
        self._projection = projection
        self._redis = redis
        self._settling: dict[str, tuple[str, asyncio.Task[None]]] = {}  # system id -> (name, task)

    async def state_changed(self, system_id: str, name: str, switch: bool) -> None:
        """After an event that changes the retained state: publish now, or, while
        switches come in bursts (`front_debounce_s`), once the front has settled."""
        sink = self._projection.sink
        wait = sink.front_debounce_s
        if not wait:
            await self._projection.publish_state(system_id, name, switched=switch)
            return
        redis = self._redis
        key = keys.mqtt(sink.key, system_id, "debounce")
        if switch:
            now = time.time()
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "first", now).hset(key, "last", now).expire(key, int(wait * 11) + 60)
                await pipe.execute()
        elif not await redis.exists(key):
            await self._projection.publish_state(system_id, name)  # nothing to wait out
            return
        _, task = self._settling.get(system_id, (name, None))
        if task is None or task.done():
            self._settling[system_id] = (name, asyncio.create_task(self._settle(system_id, name, key, wait)))

    async def _settle(self, system_id: str, name: str, key: str, wait: float) -> None:
        """Wait until no switch came for `wait` seconds (10x `wait` at most since the
        first), then publish; the burst's times are in Redis, so any worker may finish it."""
        redis = self._redis
        while True:
            first, last = await redis.hmget(key, ["first", "last"])
            if first is None or last is None:
                return  # another worker published the settled front
            delay = min(float(last) + wait, float(first) + 10 * wait) - time.time()
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        await redis.delete(key)
        try:
            await self._projection.publish_state(system_id, name, switched=True)
        except (MqttUnavailable, PluralKitError) as exc:  # the next connect publishes it
            log.warning("MQTT sink %s: settled front of %s not published: %s", self._projection.label, name, exc)

    # -- a clean stop, in steps (`MqttEndpoint.close`) --------------------------------

    async def cancel(self) -> dict[str, str]:
        """Stop waiting; the systems (id -> name) whose front was still being waited out."""
        waiting = {s: name for s, (name, task) in self._settling.items() if not task.done()}
        for _, task in self._settling.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._settling.values()), return_exceptions=True)
        return waiting

    async def publish_now(self, waiting: dict[str, str]) -> None:
        """Publish the fronts that were being waited out (`cancel`), settled or not."""
        sink_key = self._projection.sink.key
        for system_id, name in waiting.items():
            await self._redis.delete(keys.mqtt(sink_key, system_id, "debounce"))
            try:
                await self._projection.publish_state(system_id, name, switched=True)
            except (MqttUnavailable, PluralKitError) as exc:
                log.warning("MQTT sink %s: front of %s not published at stop: %s", self._projection.label, name, exc)
