"""What a config may say: the msgspec Structs, decoded strictly, and the rules
that span fields (checked after decoding).

Decoding is strict so a typo is an error naming the key and its line rather than a
setting silently ignored. Secrets are wrapped in `Secret`, whose repr and str never
show the value, so they cannot leak through logs or error messages by accident.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec

from pkrelay import shaping


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key, never a secret."""


class Secret:
    """A string that only `reveal()` shows."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison; an empty secret matches nothing."""
        if not self._value:
            return False
        return hmac.compare_digest(self._value.encode(), candidate.encode())

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    dispatch_path: str = "/dispatch"
    public_url: str = ""
    max_body_bytes: int = 262144
    admin_token: Secret = msgspec.field(default_factory=Secret)
    stream_token: Secret = msgspec.field(default_factory=Secret)  # read-only: /api/stream only
    # At most this many /api/stream connections at once (the dashboard's live view
    # included); one more gets 429 with Retry-After.
    max_streams: Annotated[int, msgspec.Meta(ge=1)] = 200
    # When set, GET /metrics (the receiver's and each worker's) needs it as Bearer; empty: open.
    metrics_token: Secret = msgspec.field(default_factory=Secret)
    # Where each `pkrelay worker` serves its own /metrics when it runs apart from a
    # receiver (0: off). Under `pkrelay run` the receiver's /metrics includes the worker.
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # How long `serve`, `worker`, `run` and `migrate` keep retrying Redis and the database
    # at start (a container starting beside its database) before giving up; 0: try once.
    startup_wait_s: Annotated[float, msgspec.Meta(ge=0)] = 120


class PluralKitConfig(_Section):
    api_base_url: str = "https://api.pluralkit.me/v2"
    user_agent: str = "pkrelay (+https://example.invalid/contact)"
    get_rate: float = 10
    update_rate: float = 3
    poll_budget: float = 1.0
    # All requests of the deployment together (every token and process), per second; 0: no cap.
    max_rate: Annotated[float, msgspec.Meta(ge=0)] = 0


class RedisConfig(_Section):
    url: str = ""


class DatabaseConfig(_Section):
    url: str = ""
    retention_days: int = 30  # the event log keeps this many days; pruned hourly


class DeliveryConfig(_Section):
    """How a failing sink is retried: after about `retry_first_s` (drawn from its upper
    half), doubling up to `retry_max_s` between tries, until `retry_window_h` have passed
    since the first attempt; then the delivery is dead-lettered."""

    # At most 15 s, so a failing sink's first three retries come within two minutes.
    retry_first_s: Annotated[float, msgspec.Meta(ge=1, le=15)] = 5
    retry_max_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 3600
    # At least a day (the contract's promise), at most 30 days.
    retry_window_h: Annotated[float, msgspec.Meta(ge=24, le=720)] = 24
    # A sink whose every attempt failed for this long is disabled (Standard Webhooks):
    # its deliveries are held until `pkrelay sinks enable` or the dashboard resumes it.
    disable_after_h: Annotated[float, msgspec.Meta(ge=1, le=8760)] = 120


class SystemConfig(_Section, kw_only=True):
    name: str
    system_id: str = ""
    signing_token: Secret = msgspec.field(default_factory=Secret)
    api_token: Secret = msgspec.field(default_factory=Secret)
    mode: Literal["auto", "poll", "webhook"] = "auto"
    public_front: bool = False  # serve /public/{name}/front, /front/stream and /widget (receiver/public.py)


class _Sink(_Section, tag_field="type", kw_only=True):
    events: list[str] | None = None
    systems: list[str] | None = None
    url: str
    public_only: bool = False
    name: str = ""  # a label for logs and metrics; without one, sink<N> (pkrelay/labels.py)

    @property
    def key(self) -> str:
        """A stable name for this sink in the database: its `name`, else a hash of URL
        and topic (what databases written before names existed hold). Not for metrics or
        logs: a short hash of a URL can be reversed by guessing (pkrelay/labels.py)."""
        if self.name:
            return self.name
        topic = getattr(self, "topic_prefix", "")
        digest = hashlib.sha256(f"{self.url}|{topic}".encode()).hexdigest()[:12]
        return f"{self.__struct_config__.tag}-{digest}"

    def wants(self, event_type: str, system: str) -> bool:
        return (self.events is None or event_type in self.events) and (self.systems is None or system in self.systems)


class ShapedSink(_Sink, kw_only=True):
    """A sink that POSTs a body it may shape (pkrelay/shaping.py)."""

    template: str = ""  # sandboxed Jinja2 over the envelope's keys; its output is the body
    content_type: str = "application/json"
    headers: dict[str, Secret] = msgspec.field(default_factory=dict)  # env:/file: allowed; never logged
    filter: str = ""  # JMESPath over the envelope: the event goes out only when it is truthy


class WebhookSink(ShapedSink, tag="webhook", kw_only=True):
    secret: Secret = msgspec.field(default_factory=Secret)


class DiscordSink(ShapedSink, tag="discord", kw_only=True):
    """A Discord channel webhook: a readable message per event (workers/discord.py)."""

    events: list[str] | None = msgspec.field(default_factory=lambda: ["CREATE_SWITCH"])


# Events that change what an MQTT sink keeps retained (the front, a fronter's look,
# which members have a sensor): the sink sees them whatever its `events` filter says.
MQTT_STATE_EVENTS = frozenset({
    "CREATE_SWITCH", "UPDATE_SWITCH", "DELETE_SWITCH", "DELETE_ALL_SWITCHES",
    "CREATE_MEMBER", "UPDATE_MEMBER", "DELETE_MEMBER", "UPDATE_SYSTEM", "SUCCESSFUL_IMPORT",
})


class MqttSink(_Sink, tag="mqtt", kw_only=True):
    topic_prefix: str = "pkrelay"
    homeassistant_discovery: bool = True
    # Per-member "fronting" binary sensors: none, "all", or these member names/ids.
    members: list[str] | Literal["all"] = msgspec.field(default_factory=list)
    # Retained front state and the switch event wait for this long without a switch
    # (at most 10x as long in all); events/<TYPE> stay immediate.
    front_debounce_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0

    def wants(self, event_type: str, system: str) -> bool:
        """`events` filters the events/<TYPE> topics only: the retained state is state,
        so the events that change it are delivered to this sink in any case."""
        return super().wants(event_type, system) or (
            event_type in MQTT_STATE_EVENTS and (self.systems is None or system in self.systems))

    def publishes(self, event_type: str) -> bool:
        """Whether the event goes out on events/<TYPE>."""
        return self.events is None or event_type in self.events


Sink = WebhookSink | MqttSink | DiscordSink
LogLevel = Literal["debug", "info", "warning", "error"]


class Settings(_Section):
    data_dir: str = "./data"  # made absolute by `load`, relative to the config file's directory
    log_level: LogLevel = "info"  # info: start, stop, reloads, warnings; debug: every job and request too
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    pluralkit: PluralKitConfig = msgspec.field(default_factory=PluralKitConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    systems: list[SystemConfig] = msgspec.field(default_factory=list)
    sinks: list[Sink] = msgspec.field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{(self.data_path / 'pkrelay.db').resolve()}"

    def dispatch_url(self, system: SystemConfig) -> str:
        """Where PluralKit posts this system's dispatches: `{public_url}/{name}` (public_url
        is the full URL of the bare dispatch path), else the local URL."""
        server = self.server
        base = server.public_url or f"http://{server.host}:{server.port}{server.dispatch_path}"
        return f"{base.rstrip('/')}/{quote(system.name, safe='')}"

    def dispatch_urls(self, system: SystemConfig) -> tuple[str, ...]:
        """The public URLs that reach this system's dispatches: its own, and the shared one."""
        public = self.server.public_url
        return (self.dispatch_url(system), public) if public else ()

    def system(self, name: str) -> SystemConfig | None:
        """The configured system of this name."""
        return next((s for s in self.systems if s.name == name), None)

    def sink(self, key: str) -> Sink | None:
        """The configured sink of this key (`_Sink.key`)."""
        return next((s for s in self.sinks if s.key == key), None)

    def secrets(self) -> list[str]:
        """Every secret value in this config, for the log redaction filter."""
        values = [self.server.admin_token.reveal(), self.server.stream_token.reveal(),
                  self.server.metrics_token.reveal()]
        for system in self.systems:
            values += [system.signing_token.reveal(), system.api_token.reveal()]
        values += [sink.secret.reveal() for sink in self.sinks if isinstance(sink, WebhookSink)]
        values += [v.reveal() for sink in self.sinks if isinstance(sink, ShapedSink) for v in sink.headers.values()]
        return [v for v in values if v]


def check(settings: Settings) -> None:
    """The rules that span fields, which msgspec cannot say: unique names, sinks naming
    known systems, retries that end before their event is pruned."""
    names = [s.name for s in settings.systems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"systems: duplicate name {dupes[0]!r}")
    if not settings.server.dispatch_path.startswith("/"):
        raise ConfigError("server.dispatch_path must start with '/'")
    delivery = settings.delivery
    if delivery.retry_max_s < delivery.retry_first_s:
        raise ConfigError("delivery.retry_max_s must be at least delivery.retry_first_s")
    if delivery.retry_window_h > settings.database.retention_days * 24:
        raise ConfigError("delivery.retry_window_h must end within database.retention_days "
                          "(a pruned event can no longer be delivered)")
    sink_names = [s.name for s in settings.sinks if s.name]
    dupes = sorted({n for n in sink_names if sink_names.count(n) > 1})
    if dupes:
        raise ConfigError(f"sinks: duplicate name {dupes[0]!r}")
    for index, sink in enumerate(settings.sinks):
        named = f" (sink {sink.name!r})" if sink.name else ""
        unknown = sorted(set(sink.systems or ()) - set(names))
        if unknown:
            raise ConfigError(f"sinks.{index}.systems{named}: names unknown system {unknown[0]!r}")
        if isinstance(sink, WebhookSink) and sink.secret and not _valid_secret(sink.secret.reveal()):
            raise ConfigError(f"sinks.{index}.secret{named}: must be empty or whsec_ followed by a base64 key")
        if isinstance(sink, ShapedSink) and (problem := shaping.problem(sink.template, sink.filter)):
            field, _, why = problem.partition(": ")
            raise ConfigError(f"sinks.{index}.{field}{named}: {why}")


def _valid_secret(value: str) -> bool:
    """A Standard Webhooks secret: whsec_ + a non-empty base64 key."""
    if not value.startswith("whsec_"):
        return False
    try:
        return bool(base64.b64decode(value.removeprefix("whsec_"), validate=True))
    except binascii.Error:
        return False
