"""MQTT sinks: events at QoS 1, retained front state, Home Assistant discovery.

One connection per sink per worker process, opened on first use. A publish that
fails drops the connection and raises MqttUnavailable; the delivery job then retries
with backoff (deliver.RetryPolicy), which is the reconnect backoff too, so nothing is
lost while the broker is down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any
from urllib.parse import urlparse

import aiomqtt
import msgspec

from pkrelay.config import MqttSink

TIMEOUT = 10.0


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
            config = discovery_config(self.sink.topic_prefix, short_id)
            await self._publish(f"homeassistant/sensor/pkrelay_{short_id}/front/config",
                                msgspec.json.encode(config), retain=True)
            self._announced.add(short_id)
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
