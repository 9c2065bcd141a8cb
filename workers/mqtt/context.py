"""What the MQTT code takes from its worker process, and nothing more.

It exists so that workers/mqtt/ depends on a few named things, not on the whole
`workers.resources.Resources` (which holds the MQTT connections, so depending on it
would be a cycle); `Resources` has these members and satisfies the protocol as it is.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from pkrelay.config import Settings, SystemConfig
from pkrelay.pluralkit.client import PluralKitClient


class MqttResources(Protocol):
    @property
    def settings(self) -> Settings:
        """The running settings (systems and sinks follow the file)."""
        ...

    @property
    def engine(self) -> AsyncEngine:
        """The database: the state store, which the retained state is made from."""
        ...

    @property
    def redis(self) -> Redis:
        """What workers share: the last switch published, the components announced, bursts of switches."""
        ...

    def client(self, system: SystemConfig) -> PluralKitClient:
        """The API client of this system's token, for a system the store does not know yet."""
        ...
