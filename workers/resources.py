"""What every job of one worker process shares, built once at start-up.

arq hands each job a shallow copy of its context dict, so anything jobs share across
runs (API clients, MQTT connections) has to live in one object made at start-up;
jobs take it from `ctx` once (`Resources.of(ctx)`) and pass it on typed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from pkrelay import pins
from pkrelay.config import LiveSettings, MqttSink, Settings, SystemConfig
from pkrelay.pluralkit.client import PluralKitClient, shared_http
from pkrelay.pluralkit.errors import PluralKitError
from pkrelay.pluralkit.ratelimit import token_key
from pkrelay.store.deliveries import RetryPolicy
from workers.mqtt.endpoint import MqttEndpoint
from workers.proxy import Proxies

log = logging.getLogger("pkrelay.worker")
CTX_KEY = "resources"
# Requests one worker process has in flight to one sink: a burst reaches a user's
# server as a steady stream over a few kept-alive connections, not as a flood of new ones.
SINK_CONCURRENCY = 8


@dataclass
class Resources:
    live: LiveSettings
    engine: AsyncEngine
    redis: ArqRedis
    http: aiohttp.ClientSession  # webhook sinks' (workers/webhook.py)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    proxies: Proxies = field(default_factory=Proxies)  # HTTP(S)_PROXY, NO_PROXY: read at start
    watcher: asyncio.Task[None] | None = None
    # One tick at a time (workers/poll.py), and the settings whose systems it scheduled.
    polling: asyncio.Lock = field(default_factory=asyncio.Lock)
    scheduled: Settings | None = None
    _api: httpx.AsyncClient | None = None  # every token's client shares this pool
    _clients: dict[str, PluralKitClient] = field(default_factory=dict)
    _mqtt: dict[str, MqttEndpoint] = field(default_factory=dict)
    _system_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    _sending: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    @staticmethod
    def of(ctx: dict[str, Any]) -> Resources:
        resources: Resources = ctx[CTX_KEY]
        return resources

    @property
    def settings(self) -> Settings:
        """The running settings (systems and sinks follow the file)."""
        return self.live.current

    def client(self, system: SystemConfig) -> PluralKitClient:
        """The client of this system's API token (or the anonymous one), one per token."""
        token = system.api_token.reveal()
        key = token_key(token)
        if key not in self._clients:
            pk = self.settings.pluralkit
            if self._api is None:
                self._api = shared_http(pk.api_base_url, pk.user_agent)
            self._clients[key] = PluralKitClient.from_settings(pk, self.redis, token, http=self._api)
        return self._clients[key]

    async def system_id(self, system: SystemConfig) -> str:
        """The system's UUID: configured, or asked of the API once per token
        (`GET /systems/@me`) when only an api_token is given."""
        if system.system_id:
            return system.system_id
        key = (system.name, token_key(system.api_token.reveal()))
        if key not in self._system_ids:
            found = await self.client(system).system("@me")
            if not isinstance(found.uuid, str):
                raise PluralKitError(f"GET /systems/@me for {system.name} named no uuid")
            await pins.pin_from_api(self.redis, system.name, found.uuid)
            self._system_ids[key] = found.uuid
        return self._system_ids[key]

    async def learn_pins(self) -> None:
        """Pin every system that has an api_token but no system_id to the UUID the API
        names for it (pkrelay/pins.py), at start and after each reload, so no dispatch
        can pin it to another system's UUID first. Failures wait for the next use."""
        for system in self.settings.systems:
            if system.api_token and not system.system_id:
                try:
                    await self.system_id(system)
                except (PluralKitError, RedisError, OSError) as exc:
                    log.info("could not learn the UUID of %s from the API yet: %s", system.name, exc)

    def sending(self, sink_key: str) -> asyncio.Semaphore:
        """A slot to hold while sending to this sink (`SINK_CONCURRENCY` per sink)."""
        return self._sending.setdefault(sink_key, asyncio.Semaphore(SINK_CONCURRENCY))

    def mqtt(self, sink: MqttSink) -> MqttEndpoint:
        """One broker connection per sink per process, kept open from its first use."""
        if sink.key not in self._mqtt:
            self._mqtt[sink.key] = MqttEndpoint(sink, self)
            self._mqtt[sink.key].start()
        return self._mqtt[sink.key]

    def open_sinks(self) -> None:
        """At start-up and after each reload: connect every MQTT sink not connected yet,
        so its retained state is there from the first second (not from the first event)."""
        for sink in self.settings.sinks:
            if isinstance(sink, MqttSink):
                self.mqtt(sink)

    async def aclose(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        for connection in self._mqtt.values():  # first: a clean stop may still publish
            await connection.close()
        if self._api is not None:
            await self._api.aclose()
        await self.http.close()
        await self.engine.dispose()
