"""One MQTT sink as a worker process holds it: its broker connection, the retained
projection it announces on each connect, and the front debounce, wired together.

It exists so that `Resources.mqtt(sink)` keeps one object per sink, opened once and
closed in the right order: what is still being waited out is published before
`offline` is said.
"""

from __future__ import annotations

from pkrelay.config import MqttSink
from pkrelay.labels import sink_label
from workers.mqtt.connection import BrokerConnection
from workers.mqtt.context import MqttResources
from workers.mqtt.debounce import FrontDebounce
from workers.mqtt.projection import Projection


class MqttEndpoint:
    """One sink's connection in this process, with what it has published."""

    def __init__(self, sink: MqttSink, resources: MqttResources) -> None:
        self.connection = BrokerConnection(sink, self.announce, sink_label(resources.settings, sink))
        self.projection = Projection(sink, self.connection, resources)
        self.debounce = FrontDebounce(self.projection, resources.redis)

    def start(self) -> None:
        self.connection.start()

    async def announce(self) -> None:
        """Discovery and state of every system this sink covers (on connect, on birth)."""
        await self.projection.announce()

    async def close(self) -> None:
        """Clean stop: publish what is still being waited out, say `offline`, disconnect."""
        self.connection.stopping()
        waiting = await self.debounce.cancel()
        await self.connection.drain()
        await self.debounce.publish_now(waiting)
        await self.connection.close()
