"""The sink seam: each kind of sink sends an envelope, or says why it could not.

`deliver` only plans, sends and settles; what "sending" means (an HTTP POST, MQTT
publishes) lives with each sink, behind `Sender`. This module is only the interface
and imports no sink: the sinks import it, and `workers.senders` picks one per sink.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pkrelay.envelope import Event


class DeliveryFailed(Exception):
    """The sink did not take the event; `status` is its answer's status code, if any;
    `retry_after` the seconds it asked us to wait (a 429 or 503's Retry-After)."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Outgoing:
    """One event on its way to one sink."""

    event: Event
    body: bytes  # the envelope as JSON, as this sink may see it (public_only applied)
    system: str  # the configured name of the event's system
    envelope: Mapping[str, Any] = field(default_factory=dict)  # `body` decoded: what templates see


class Sender(Protocol):
    async def send(self, outgoing: Outgoing) -> int | None:
        """Deliver once; returns the sink's status code where it has one, raises
        DeliveryFailed otherwise."""
        ...

