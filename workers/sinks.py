"""The sink seam: each kind of sink sends an envelope, or says why it could not.

`deliver` only plans, sends and settles; what "sending" means (an HTTP POST, MQTT
publishes) lives with each sink, behind `Sender`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, assert_never

from pkrelay.config import MqttSink, Sink, WebhookSink
from pkrelay.envelope import Event

if TYPE_CHECKING:
    from workers.resources import Resources


class DeliveryFailed(Exception):
    """The sink did not take the event; `status` is its answer's status code, if any."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Outgoing:
    """One event on its way to one sink."""

    event: Event
    body: bytes  # the envelope as JSON, as this sink may see it (public_only applied)
    system: str  # the configured name of the event's system


class Sender(Protocol):
    async def send(self, outgoing: Outgoing) -> int | None:
        """Deliver once; returns the sink's status code where it has one, raises
        DeliveryFailed otherwise."""
        ...


def sender_for(sink: Sink, resources: Resources) -> Sender:
    from workers.mqtt import MqttSender
    from workers.webhook import WebhookSender

    match sink:
        case WebhookSink():
            return WebhookSender(sink, resources.http)
        case MqttSink():
            return MqttSender(sink, resources)
        case _:
            assert_never(sink)
