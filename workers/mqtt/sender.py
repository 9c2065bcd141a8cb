"""Delivery to an MQTT sink: the `Sender` (workers/sinks.py) of `type = "mqtt"`.

It exists to keep what a delivery publishes apart from the connection it publishes
on: the event on its topic (if the sink's `events` filter lets it through) and, for
the events that change it, the retained state, now or once the front has settled.
"""

from __future__ import annotations

from collections.abc import Callable

from pkrelay.config import MQTT_STATE_EVENTS, MqttSink
from pkrelay.pluralkit.errors import PluralKitError
from workers.mqtt import discovery as ha
from workers.mqtt.connection import MqttUnavailable
from workers.mqtt.endpoint import MqttEndpoint
from workers.sinks import DeliveryFailed, Outgoing

SWITCH_TYPES = frozenset({"CREATE_SWITCH", "UPDATE_SWITCH", "DELETE_SWITCH", "DELETE_ALL_SWITCHES"})


class MqttSender:
    """The event on its topic; for the events that change it, the retained state."""

    def __init__(self, sink: MqttSink, endpoint_for: Callable[[MqttSink], MqttEndpoint]) -> None:
        """`endpoint_for` is `Resources.mqtt`: the sink's endpoint, opened on first use."""
        self.sink = sink
        self.endpoint_for = endpoint_for

    async def send(self, outgoing: Outgoing) -> None:
        event = outgoing.event
        if not event.system_id:
            raise DeliveryFailed("the event names no system, so it has no topic")
        endpoint = self.endpoint_for(self.sink)
        try:
            if self.sink.publishes(event.type):
                short_id = await endpoint.projection.short_id(event.system_id, outgoing.system)
                await endpoint.connection.publish(ha.Topics(self.sink.topic_prefix, short_id).event(event.type),
                                                  outgoing.body)
            if event.type in MQTT_STATE_EVENTS:
                await endpoint.debounce.state_changed(event.system_id, outgoing.system,
                                                      switch=event.type in SWITCH_TYPES)
        except (MqttUnavailable, PluralKitError) as exc:
            raise DeliveryFailed(str(exc)) from None
