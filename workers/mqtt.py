"""MQTT sinks: events at QoS 1, retained state from the first second, Home Assistant discovery.

Each worker process keeps one connection per MQTT sink for its whole life, opened at
start-up (`Resources.open_sinks`) and reconnected with backoff. On every connect it
publishes `{prefix}/status` = `online` (its last will, retained, says `offline`),
then discovery and the current state of every system the sink covers, from the state
store; it does so again when Home Assistant announces itself (`homeassistant/status`
= `online`). Deliveries publish the event on `events/<TYPE>` (if the sink's `events`
filter lets it through) and, for the events that change it, the retained state.

Several workers share `{prefix}/status`: each publishes the same retained state
(idempotent), and a worker that sees `offline` there while it is itself connected
(another worker's last will, or its clean stop) says `online` again at once, so the
entities go unavailable only when no worker is left.

A publish that fails raises MqttUnavailable; the delivery job then retries with
backoff (deliveries.RetryPolicy), so no event is lost while the broker is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import aiomqtt
import msgspec

from pkrelay import keys
from pkrelay.config import MQTT_STATE_EVENTS, MqttSink, SystemConfig
from pkrelay.pluralkit.errors import PluralKitError
from pkrelay.retry import Backoff
from pkrelay.store import state
from pkrelay.store.state import Kind
from workers import homeassistant as ha
from workers import privacy
from workers.fetch import as_data
from workers.sinks import DeliveryFailed, Outgoing

if TYPE_CHECKING:
    from workers.resources import Resources

log = logging.getLogger("pkrelay.mqtt")

TIMEOUT = 10.0
CONNECT_WAIT = 3.0  # a delivery waits this long for a connection being opened, then retries later
KEEPALIVE = 15  # the broker sends the last will this long (x1.5) after a silent link
RECONNECT = Backoff(base=0.5, cap=30.0)
SWITCH_TYPES = frozenset({"CREATE_SWITCH", "UPDATE_SWITCH", "DELETE_SWITCH", "DELETE_ALL_SWITCHES"})


class MqttUnavailable(Exception):
    """The broker could not be reached or did not acknowledge in time."""


class MqttConnection:
    """One sink's broker connection in this process, with what it has published."""

    def __init__(self, sink: MqttSink, resources: Resources) -> None:
        self._sink = sink
        self.resources = resources
        self._client: aiomqtt.Client | None = None
        self._up = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._settling: dict[str, tuple[str, asyncio.Task[None]]] = {}  # system id -> (name, task)
        self._locks: dict[str, asyncio.Lock] = {}
        # Retained payloads as last sent on this connection: an unchanged one is not
        # sent again (one discovery config, not one per switch). Marked before the
        # publish, since deliveries run concurrently; forgotten on failure and on reconnect.
        self._sent: dict[str, bytes] = {}

    @property
    def sink(self) -> MqttSink:
        """The sink as the running config has it (members and debounce may change)."""
        current = self.resources.settings.sink(self._sink.key)
        return current if isinstance(current, MqttSink) else self._sink

    @property
    def status_topic(self) -> str:
        return f"{self._sink.topic_prefix}/status"

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"mqtt {self._sink.key}")

    def _client_for(self) -> aiomqtt.Client:
        url = urlparse(self._sink.url)
        tls = ssl.create_default_context() if url.scheme == "mqtts" else None
        return aiomqtt.Client(
            url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883),
            username=url.username, password=url.password, tls_context=tls, timeout=TIMEOUT, keepalive=KEEPALIVE,
            identifier=f"pkrelay-{socket.gethostname()}-{os.getpid()}-{self._sink.key}",
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
        )

    async def _run(self) -> None:
        """Stay connected: announce on each connect, answer Home Assistant's birth."""
        failures = 0
        while not self._closing:
            try:
                async with self._client_for() as client:
                    failures = 0
                    await client.subscribe(ha.BIRTH_TOPIC, qos=1)
                    await client.subscribe(self.status_topic, qos=1)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True, timeout=TIMEOUT)
                    self._sent, self._client = {}, client
                    self._up.set()
                    log.info("connected to MQTT sink %s", self._sink.key)
                    self._spawn(self.announce())
                    async for message in client.messages:
                        await self._received(client, message)
            except aiomqtt.MqttError as exc:
                if not self._closing:
                    log.warning("MQTT sink %s: %s", self._sink.key, exc)
            finally:
                self._up.clear()
                self._client = None
            failures += 1
            await asyncio.sleep(RECONNECT.delay(failures))

    async def _received(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
        if message.topic.matches(ha.BIRTH_TOPIC) and payload == b"online":
            log.info("Home Assistant came online: announcing again on MQTT sink %s", self._sink.key)
            self._sent = {}
            self._spawn(self.announce())
        elif message.topic.matches(self.status_topic) and payload == b"offline" and not self._closing:
            # Another worker's last will (or clean stop); this one is still here.
            await client.publish(self.status_topic, b"online", qos=1, retain=True, timeout=TIMEOUT)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        try:
            await asyncio.wait_for(self._up.wait(), CONNECT_WAIT)
        except TimeoutError:
            raise MqttUnavailable("not connected to the broker") from None
        client = self._client
        if client is None:
            raise MqttUnavailable("not connected to the broker")
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=TIMEOUT)
        except aiomqtt.MqttError as exc:
            raise MqttUnavailable(f"publish to {topic} failed: {exc}") from None

    async def _retain(self, topic: str, payload: bytes) -> None:
        """A retained publish, skipped when this connection already sent exactly that."""
        if self._sent.get(topic) == payload:
            return
        self._sent[topic] = payload
        try:
            await self.publish(topic, payload, retain=True)
        except MqttUnavailable:
            self._sent.pop(topic, None)
            raise

    # -- what is published ---------------------------------------------------------

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
                log.warning("MQTT sink %s: state of %s not published: %s", sink.key, configured.name, exc)
            except Exception:
                log.exception("MQTT sink %s: state of %s not published", sink.key, configured.name)

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
            system, fronters, members = await self._load(system_id, name)
            if sink.public_only:
                fronters = (privacy.public_switch({"members": fronters}, system) or {}).get("members") or []
                members = [m for m in (privacy.public_member(m) for m in members) if m is not None]
            t = ha.Topics(sink.topic_prefix, str(system["id"]))
            sensed = ha.selected(members, sink.members) if sink.homeassistant_discovery else []
            if sink.homeassistant_discovery:
                await self._discover(system_id, t, ha.components(t, sensed))
            fronting = {m.get("uuid") for m in fronters}
            await self._retain(t.fronters, msgspec.json.encode(fronters))
            await self._retain(t.attributes, msgspec.json.encode(ha.front_attributes(fronters)))
            await self._retain(t.count, str(len(fronters)).encode())
            for member in sensed:
                await self._retain(t.fronting(member["id"]), b"ON" if member.get("uuid") in fronting else b"OFF")
            await self._retain(t.front, ha.front_state(fronters).encode())
            if switched:
                # The front of the last switch event, swapped atomically: one event per
                # change, however many deliveries or workers publish it.
                described = msgspec.json.encode([ha.describe(m) for m in fronters])
                before = await self.resources.redis.set(keys.mqtt(sink.key, system_id, "front"), described, get=True)
                if before != described:
                    previous = msgspec.json.decode(before) if before else []
                    await self.publish(t.switch, msgspec.json.encode(ha.switch_event(previous, fronters)))

    async def _discover(self, system_id: str, t: ha.Topics, cmps: dict[str, dict[str, Any]]) -> None:
        """The device config; components announced before and gone now are listed
        with only their platform, which makes Home Assistant remove them."""
        redis = self.resources.redis
        known_key = keys.mqtt(self.sink.key, system_id, "components")
        known = {k.decode(): v.decode() for k, v in (await redis.hgetall(known_key)).items()}
        removed = {cid: platform for cid, platform in known.items() if cid not in cmps}
        config = msgspec.json.encode(ha.device_config(t, cmps, removed))
        if self._sent.get(t.discovery) == config:
            return
        migrated_key = keys.mqtt(self.sink.key, system_id, "migrated")
        legacy = not await redis.exists(migrated_key)
        if legacy:
            # Home Assistant's documented move to device discovery: unload the entity
            # of the per-entity config (keeping its registry entry and entity id)...
            await self.publish(t.legacy_discovery, b'{"migrate_discovery": true}')
        await redis.hset(known_key, mapping={cid: c["p"] for cid, c in cmps.items()})
        await self._retain(t.discovery, config)
        if legacy:
            # ...then, with the same discovery id now on the device, clear the old config.
            await self.publish(t.legacy_discovery, b"", retain=True)
            await redis.set(migrated_key, b"1")

    # -- the front, waited out ------------------------------------------------------

    async def state_changed(self, system_id: str, name: str, switch: bool) -> None:
        """After an event that changes the retained state: publish now, or, while
        switches come in bursts (`front_debounce_s`), once the front has settled."""
        wait = self.sink.front_debounce_s
        if not wait:
            await self.publish_state(system_id, name, switched=switch)
            return
        redis = self.resources.redis
        key = keys.mqtt(self.sink.key, system_id, "debounce")
        if switch:
            now = time.time()
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "first", now).hset(key, "last", now).expire(key, int(wait * 11) + 60)
                await pipe.execute()
        elif not await redis.exists(key):
            await self.publish_state(system_id, name)  # nothing to wait out
            return
        _, task = self._settling.get(system_id, (name, None))
        if task is None or task.done():
            self._settling[system_id] = (name, asyncio.create_task(self._settle(system_id, name, key, wait)))

    async def _settle(self, system_id: str, name: str, key: str, wait: float) -> None:
        """Wait until no switch came for `wait` seconds (10x `wait` at most since the
        first), then publish; the burst's times are in Redis, so any worker may finish it."""
        redis = self.resources.redis
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
            await self.publish_state(system_id, name, switched=True)
        except (MqttUnavailable, PluralKitError) as exc:  # the next connect publishes it
            log.warning("MQTT sink %s: settled front of %s not published: %s", self.sink.key, name, exc)

    async def close(self) -> None:
        """Clean stop: publish what is still being waited out, say `offline`, disconnect."""
        self._closing = True
        waiting = {s: name for s, (name, task) in self._settling.items() if not task.done()}
        for _, task in self._settling.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._settling.values()), *self._tasks, return_exceptions=True)
        for system_id, name in waiting.items():
            await self.resources.redis.delete(keys.mqtt(self._sink.key, system_id, "debounce"))
            try:
                await self.publish_state(system_id, name, switched=True)
            except (MqttUnavailable, PluralKitError) as exc:
                log.warning("MQTT sink %s: front of %s not published at stop: %s", self._sink.key, name, exc)
        if self._client is not None:
            try:
                await self._client.publish(self.status_topic, b"offline", qos=1, retain=True, timeout=TIMEOUT)
            except aiomqtt.MqttError:
                pass
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)


class MqttSender:
    """The event on its topic; for the events that change it, the retained state."""

    def __init__(self, sink: MqttSink, resources: Resources) -> None:
        self.sink = sink
        self.resources = resources

    async def send(self, outgoing: Outgoing) -> None:
        event = outgoing.event
        if not event.system_id:
            raise DeliveryFailed("the event names no system, so it has no topic")
        connection = self.resources.mqtt(self.sink)
        try:
            if self.sink.publishes(event.type):
                short_id = await self._short_id(event.system_id, outgoing.system)
                await connection.publish(ha.Topics(self.sink.topic_prefix, short_id).event(event.type), outgoing.body)
            if event.type in MQTT_STATE_EVENTS:
                await connection.state_changed(event.system_id, outgoing.system, switch=event.type in SWITCH_TYPES)
        except (MqttUnavailable, PluralKitError) as exc:
            raise DeliveryFailed(str(exc)) from None

    async def _short_id(self, system_id: str, name: str) -> str:
        async with self.resources.engine.connect() as conn:
            system = await state.get(conn, system_id, Kind.SYSTEM, system_id)
        if system is None:
            data, _ = await self.resources.mqtt(self.sink)._fetch(system_id, name)
            return str(data["id"])
        return str(system.data["id"])

