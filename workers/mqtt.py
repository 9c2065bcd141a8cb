"""MQTT sinks: events at QoS 1, retained front state, Home Assistant discovery.

One connection per sink per worker process, opened on first use. A publish that
fails drops the connection and raises MqttUnavailable; the delivery job then retries
with backoff (deliveries.RetryPolicy), which is the reconnect backoff too, so nothing
is lost while the broker is down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import aiomqtt
import msgspec

from pkrelay.config import MqttSink
from pkrelay.envelope import Event
from pkrelay.pluralkit.errors import PluralKitError
from workers import privacy, state
from workers.fetch import as_data
from workers.sinks import DeliveryFailed, Outgoing
from workers.state import Kind

if TYPE_CHECKING:
    from workers.resources import Resources

TIMEOUT = 10.0
FRONT_TYPES = frozenset({"CREATE_SWITCH", "UPDATE_SWITCH", "DELETE_SWITCH", "DELETE_ALL_SWITCHES"})


class MqttUnavailable(Exception):
    """The broker could not be reached or did not acknowledge in time."""


def front_attributes(fronters: list[dict[str, Any]]) -> dict[str, Any]:
    """What Home Assistant shows beside the sensor: the first fronter's look, everyone's names."""
    first = fronters[0] if fronters else {}
    color = first.get("color")
    return {
        "id": first.get("id"), "uuid": first.get("uuid"), "name": first.get("name"),
        "display_name": first.get("display_name"), "color": f"#{color}" if color else None,
        "avatar_url": first.get("avatar_url"),
        "fronters": [m.get("display_name") or m.get("name") or m.get("uuid") for m in fronters],
    }


def discovery_config(prefix: str, short_id: str) -> dict[str, Any]:
    base = f"{prefix}/{short_id}/front"
    return {
        "name": "Current fronter",
        "unique_id": f"pkrelay_{short_id}_front",
        "object_id": f"pkrelay_{short_id}_front",
        "state_topic": base,
        "json_attributes_topic": f"{base}/attributes",
        "icon": "mdi:account-switch",
        "device": {"identifiers": [f"pkrelay_{short_id}"], "name": f"PluralKit system {short_id}",
                   "manufacturer": "pkrelay"},
    }


class MqttConnection:
    def __init__(self, sink: MqttSink) -> None:
        self.sink = sink
        self._client: aiomqtt.Client | None = None
        self._announced: set[str] = set()
        self._connecting = asyncio.Lock()  # concurrent deliveries share one connection

    async def _connected(self) -> aiomqtt.Client:
        async with self._connecting:
            return self._client or await self._connect()

    async def _connect(self) -> aiomqtt.Client:
        url = urlparse(self.sink.url)
        tls = ssl.create_default_context() if url.scheme == "mqtts" else None
        client = aiomqtt.Client(
            url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883),
            username=url.username, password=url.password, tls_context=tls, timeout=TIMEOUT,
            identifier=f"pkrelay-{socket.gethostname()}-{os.getpid()}-{self.sink.key}",
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise MqttUnavailable(f"cannot connect: {exc}") from None
        self._client, self._announced = client, set()
        return client

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        client = await self._connected()
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=TIMEOUT)
        except aiomqtt.MqttError as exc:
            await self.close()
            raise MqttUnavailable(f"publish to {topic} failed: {exc}") from None

    async def publish_event(self, short_id: str, event_type: str, body: bytes) -> None:
        await self._publish(f"{self.sink.topic_prefix}/{short_id}/events/{event_type}", body)

    async def publish_front(self, short_id: str, fronters: list[dict[str, Any]]) -> None:
        prefix = f"{self.sink.topic_prefix}/{short_id}"
        if self.sink.homeassistant_discovery and short_id not in self._announced:
            # Marked first: deliveries run concurrently and each would announce. A failed
            # publish drops the connection, and the next one starts with nothing announced.
            self._announced.add(short_id)
            config = discovery_config(self.sink.topic_prefix, short_id)
            await self._publish(f"homeassistant/sensor/pkrelay_{short_id}/front/config",
                                msgspec.json.encode(config), retain=True)
        first = fronters[0] if fronters else {}
        await self._publish(f"{prefix}/fronters", msgspec.json.encode(fronters), retain=True)
        await self._publish(f"{prefix}/front/attributes", msgspec.json.encode(front_attributes(fronters)),
                            retain=True)
        await self._publish(f"{prefix}/front", (first.get("display_name") or first.get("name") or "").encode(),
                            retain=True)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass


class MqttSender:
    """The event on its topic; after a switch, the retained front state too."""

    def __init__(self, sink: MqttSink, resources: Resources) -> None:
        self.sink = sink
        self.resources = resources

    async def send(self, outgoing: Outgoing) -> None:
        try:
            await self._send(outgoing.event, outgoing.body, outgoing.system)
        except (MqttUnavailable, PluralKitError) as exc:
            raise DeliveryFailed(str(exc)) from None

    async def _send(self, event: Event, body: bytes, system_name: str) -> None:
        if not event.system_id:
            raise MqttUnavailable("the event names no system, so it has no topic")
        engine = self.resources.engine
        async with engine.connect() as conn:
            system = await state.get(conn, Kind.SYSTEM, event.system_id)
            fronters = await state.get(conn, Kind.FRONTERS, event.system_id) if event.type in FRONT_TYPES else None
        if system is None:
            system = await self._fetch_system(system_name, event.system_id)
        connection = self.resources.mqtt(self.sink)
        short_id = str(system.data["id"])
        await connection.publish_event(short_id, event.type, body)
        if event.type in FRONT_TYPES:
            current = fronters.data if fronters else {"members": []}
            if self.sink.public_only:
                current = privacy.public_switch(current, system.data) or {"members": []}
            await connection.publish_front(short_id, [m for m in current.get("members", []) if isinstance(m, dict)])

    async def _fetch_system(self, name: str, system_id: str) -> state.Stored:
        """The topic needs the short id: one call, then stored."""
        configured = self.resources.settings.system(name)
        if configured is None:
            raise MqttUnavailable(f"system {name} is no longer configured")
        fetched = as_data(await self.resources.client(configured).system(system_id))
        async with self.resources.engine.begin() as conn:
            await state.apply(conn, system_id, [state.Put(Kind.SYSTEM, system_id, fetched, datetime.now(UTC))])
        return state.Stored(fetched, None)
