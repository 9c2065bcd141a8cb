"""The retained state an MQTT sink holds for each system it covers, and its device discovery.

It exists to turn the state store into retained topics: a system's fronters and
front, a sensor per member, the device config that tells Home Assistant about them
(removing components gone since, and migrating once from the per-entity configs of
older versions), and the switch event, once per change of front however many
deliveries or workers publish it. A system the store does not know yet is fetched
from the API once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec

from pkrelay import keys, privacy
from pkrelay.config import MqttSink, SystemConfig
from pkrelay.labels import sink_label
from pkrelay.pluralkit.errors import PluralKitError
from pkrelay.store import state
from pkrelay.store.front import switches
from pkrelay.store.state import Kind
from workers.fetch import as_data
from workers.mqtt import discovery as ha
from workers.mqtt.connection import BrokerConnection, MqttUnavailable
from workers.mqtt.context import MqttResources

log = logging.getLogger("pkrelay.mqtt")


class Projection:
    """What one sink's connection retains, system by system."""

    def __init__(self, sink: MqttSink, connection: BrokerConnection, resources: MqttResources) -> None:
        self._sink = sink
        self._connection = connection
        self.resources = resources
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def sink(self) -> MqttSink:
        """The sink as the running config has it (members and debounce may change)."""
        current = self.resources.settings.sink(self._sink.key)
        return current if isinstance(current, MqttSink) else self._sink

    @property
    def label(self) -> str:
        """The sink's name in logs (`pkrelay.labels`)."""
        return sink_label(self.resources.settings, self.sink)

    async def announce(self) -> None:
        """Discovery and state of every system this sink covers (on connect, on birth)."""
        sink = self.sink
        for configured in self.resources.settings.systems:
            if sink.systems is not None and configured.name not in sink.systems:
                continue
            try:
                system_id = configured.system_id or await self._own_id(configured)
                if system_id:
                    await self.publish_state(system_id, configured.name)
            except (MqttUnavailable, PluralKitError) as exc:
                log.warning("MQTT sink %s: state of %s not published: %s", self.label, configured.name, exc)
            except Exception:
                log.exception("MQTT sink %s: state of %s not published", self.label, configured.name)

    async def short_id(self, system_id: str, name: str) -> str:
        """The system's 5- or 6-letter id, which its topics are named by."""
        async with self.resources.engine.connect() as conn:
            system = await state.get(conn, system_id, Kind.SYSTEM, system_id)
        if system is None:
            data, _ = await self._fetch(system_id, name)
            return str(data["id"])
        return str(system.data["id"])

    async def _own_id(self, configured: SystemConfig) -> str | None:
        """A system configured without its id: its token knows it."""
        if not configured.api_token:
            return None
        system = as_data(await self.resources.client(configured).system("@me"))
        await self._store(system["uuid"], [state.Put(Kind.SYSTEM, system["uuid"], system, datetime.now(UTC))])
        return str(system["uuid"])

    async def _store(self, system_id: str, writes: list[state.Write]) -> None:
        async with self.resources.engine.begin() as conn:
            await state.apply(conn, system_id, writes)

    async def _load(self, system_id: str,
                    name: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """The system, its fronters (each as its member record is now) and its members,
        from the store; a system the store does not know yet is fetched once."""
        engine = self.resources.engine
        async with engine.connect() as conn:
            system = await state.get(conn, system_id, Kind.SYSTEM, system_id)
            front = await state.get(conn, system_id, Kind.FRONTERS, system_id)
            members = await state.all_of(conn, system_id, Kind.MEMBER)
        if system is None:
            system_data, front_data = await self._fetch(system_id, name)
        else:
            system_data, front_data = system.data, front.data if front else None
        listed = [m for m in (front_data or {}).get("members") or [] if isinstance(m, dict)]
        fronters = [{**m, **members.get(str(m.get("uuid")), {})} for m in listed]
        return system_data, fronters, list(members.values())

    async def _fetch(self, system_id: str, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        configured = self.resources.settings.system(name)
        if configured is None:
            raise MqttUnavailable(f"system {name} is no longer configured")
        client = self.resources.client(configured)
        system = as_data(await client.system(system_id))
        now = datetime.now(UTC)
        writes: list[state.Write] = [state.Put(Kind.SYSTEM, system_id, system, now)]
        try:
            front = as_data(await client.fronters(system_id))
        except PluralKitError as exc:  # a private front without a token: nobody, as far as we know
            log.info("fronters of %s not fetched: %s", name, exc)
            front = None
        if front:
            writes.append(state.Put(Kind.FRONTERS, system_id, front, now))
        await self._store(system_id, writes)
        return system, front

    async def publish_state(self, system_id: str, name: str, switched: bool = False) -> None:
        """Everything retained for one system; with `switched`, the switch event too
        (once per change of front, whichever worker sees it first)."""
        async with self._locks.setdefault(system_id, asyncio.Lock()):
            sink = self.sink
            retain = self._connection.retain
            system, fronters, members = await self._load(system_id, name)
            if sink.public_only:
                fronters = (privacy.public_switch({"members": fronters}, system) or {}).get("members") or []
                members = [m for m in (privacy.public_member(m) for m in members) if m is not None]
            t = ha.Topics(sink.topic_prefix, str(system["id"]))
            sensed = ha.selected(members, sink.members) if sink.homeassistant_discovery else []
            if sink.homeassistant_discovery:
                await self._discover(system_id, t, ha.components(t, sensed))
            fronting = {m.get("uuid") for m in fronters}
            await retain(t.fronters, msgspec.json.encode(fronters))
            await retain(t.attributes, msgspec.json.encode(ha.front_attributes(fronters)))
            await retain(t.count, str(len(fronters)).encode())
            for member in sensed:
                await retain(t.fronting(member["id"]), b"ON" if member.get("uuid") in fronting else b"OFF")
            await retain(t.front, ha.front_state(fronters).encode())
            if not switched:
                return
            # The front of the last switch event, swapped atomically: one event per
            # change of who fronts, however many deliveries, workers or replays publish it.
            described = msgspec.json.encode([ha.describe(m) for m in fronters])
            before = await self.resources.redis.set(keys.mqtt(sink.key, system_id, "front"), described, get=True)
            # A sink's first switch event (a sink just added): who fronted before, from the log.
            previous = msgspec.json.decode(before) if before else await self._before_last_switch(system_id)
            if ha.front_ids(previous) != ha.front_ids(fronters):
                await self._connection.publish(t.switch, msgspec.json.encode(ha.switch_event(previous, fronters)))

    async def _before_last_switch(self, system_id: str) -> list[dict[str, Any]]:
        """Who fronted before the newest logged switch (nobody, as far as the log knows)."""
        async with self.resources.engine.connect() as conn:
            last = await switches(conn, system_id, 2)
        return [ha.describe(m) for m in last[1].members] if len(last) == 2 else []

    async def _discover(self, system_id: str, t: ha.Topics, cmps: dict[str, dict[str, Any]]) -> None:
        """The device config; components announced before and gone now are listed
        with only their platform, which makes Home Assistant remove them."""
        redis = self.resources.redis
        known_key = keys.mqtt(self.sink.key, system_id, "components")
        known = {k.decode(): v.decode() for k, v in (await redis.hgetall(known_key)).items()}
        removed = {cid: platform for cid, platform in known.items() if cid not in cmps}
        config = msgspec.json.encode(ha.device_config(t, cmps, removed))
        if self._connection.sent(t.discovery) == config:
            return
        migrated_key = keys.mqtt(self.sink.key, system_id, "migrated")
        legacy = not await redis.exists(migrated_key)
        if legacy:
            # Home Assistant's documented move to device discovery: unload the entity
            # of the per-entity config (keeping its registry entry and entity id)...
            await self._connection.publish(t.legacy_discovery, b'{"migrate_discovery": true}')
        await redis.hset(known_key, mapping={cid: c["p"] for cid, c in cmps.items()})
        await self._connection.retain(t.discovery, config)
        if legacy:
            # ...then, with the same discovery id now on the device, clear the old config.
            await self._connection.publish(t.legacy_discovery, b"", retain=True)
            await redis.set(migrated_key, b"1")
