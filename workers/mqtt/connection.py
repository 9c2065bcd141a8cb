"""One MQTT sink's broker connection in a worker process, kept up for the process's life.

It exists so that nothing else deals with the link itself: it reconnects with
backoff, leaves a retained `offline` as its last will on `{prefix}/status` and says
`online` there on each connect (again at once when another worker's will or clean
stop said `offline`), and asks for an announcement (`announce`) on each connect and
whenever Home Assistant comes online. Publishes wait briefly for a link being opened;
retained ones are remembered, so an unchanged payload is not sent twice on one link.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlparse

import aiomqtt

from pkrelay.config import MqttSink
from pkrelay.retry import Backoff
from workers.mqtt import discovery as ha

log = logging.getLogger("pkrelay.mqtt")

TIMEOUT = 10.0
CONNECT_WAIT = 3.0  # a delivery waits this long for a connection being opened, then retries later
KEEPALIVE = 15  # the broker sends the last will this long (x1.5) after a silent link
RECONNECT = Backoff(base=0.5, cap=30.0)


class MqttUnavailable(Exception):
    """The broker could not be reached or did not acknowledge in time."""


class BrokerConnection:
    """One sink's broker connection in this process, with what it has retained."""

    def __init__(self, sink: MqttSink, announce: Callable[[], Coroutine[Any, Any, None]], label: str) -> None:
        self._sink = sink
        self.label = label  # logs name the sink by it, never by its key (a hash of its URL)
        self._announce = announce
        self._client: aiomqtt.Client | None = None
        self._up = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Retained payloads as last sent on this connection: an unchanged one is not
        # sent again (one discovery config, not one per switch). Marked before the
        # publish, since deliveries run concurrently; forgotten on failure and on reconnect.
        self._sent: dict[str, bytes] = {}

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
                    log.info("connected to MQTT sink %s", self.label)
                    self._spawn(self._announce())
                    async for message in client.messages:
                        await self._received(client, message)
            except aiomqtt.MqttError as exc:
                if not self._closing:
                    log.warning("MQTT sink %s: %s", self.label, exc)
            finally:
                self._up.clear()
                self._client = None
            failures += 1
            await asyncio.sleep(RECONNECT.delay(failures))

    async def _received(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
        if message.topic.matches(ha.BIRTH_TOPIC) and payload == b"online":
            log.info("Home Assistant came online: announcing again on MQTT sink %s", self.label)
            self._sent = {}
            self._spawn(self._announce())
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

    def sent(self, topic: str) -> bytes | None:
        """The retained payload this connection last sent on `topic`, if any."""
        return self._sent.get(topic)

    async def retain(self, topic: str, payload: bytes) -> None:
        """A retained publish, skipped when this connection already sent exactly that."""
        if self._sent.get(topic) == payload:
            return
        self._sent[topic] = payload
        try:
            await self.publish(topic, payload, retain=True)
        except MqttUnavailable:
            self._sent.pop(topic, None)
            raise

    # -- a clean stop, in steps (`MqttEndpoint.close`) --------------------------------

    def stopping(self) -> None:
        """From now on: no reconnect, and no `online` in answer to an `offline`."""
        self._closing = True

    async def drain(self) -> None:
        """Let the announcements under way finish."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Say `offline`, disconnect."""
        self._closing = True
        if self._client is not None:
            try:
                await self._client.publish(self.status_topic, b"offline", qos=1, retain=True, timeout=TIMEOUT)
            except aiomqtt.MqttError:
                pass
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
