"""Which `Sender` sends to a sink: where the sink seam (`workers.sinks`) meets the
sinks themselves and the resources they share in a worker process."""

from __future__ import annotations

from typing import assert_never

from pkrelay.config import DiscordSink, MqttSink, Sink, WebhookSink
from workers.discord import DiscordSender
from workers.mqtt.sender import MqttSender
from workers.resources import Resources
from workers.sinks import Sender
from workers.webhook import WebhookSender


def sender_for(sink: Sink, resources: Resources) -> Sender:
    match sink:
        case WebhookSink():
            return WebhookSender(sink, resources.http, resources.proxies)
        case DiscordSink():
            return DiscordSender(sink, resources.http, resources.proxies)
        case MqttSink():
            return MqttSender(sink, resources.mqtt)
        case _:
            assert_never(sink)
