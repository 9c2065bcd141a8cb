"""The settings users touch: one TOML file, decoded strictly, with env overrides.

Decoding is strict so a typo is an error naming the key and its line rather than a
setting silently ignored. Secrets are wrapped in `Secret`, whose repr and str never
show the value, so they cannot leak through logs or error messages by accident.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

ENV_PREFIX = "PKRELAY_"
CONFIG_ENV = "PKRELAY_CONFIG"
DEFAULT_CONFIG = "pkrelay.toml"


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


class SystemConfig(_Section, kw_only=True):
    name: str
    system_id: str = ""
    signing_token: Secret = msgspec.field(default_factory=Secret)
    api_token: Secret = msgspec.field(default_factory=Secret)
    mode: Literal["auto", "poll", "webhook"] = "auto"


class _Sink(_Section, tag_field="type", kw_only=True):
    events: list[str] | None = None
    systems: list[str] | None = None
    url: str
    public_only: bool = False
    name: str = ""  # a label for logs and metrics; without one, a hash stands in

    @property
    def key(self) -> str:
        """A stable name for this sink in the database and metrics, without its URL
        (URLs can carry secrets, e.g. Home Assistant webhook ids): its `name`, else a
        hash of URL and topic (what databases written before names existed hold)."""
        if self.name:
            return self.name
        topic = getattr(self, "topic_prefix", "")
        digest = hashlib.sha256(f"{self.url}|{topic}".encode()).hexdigest()[:12]
        return f"{self.__struct_config__.tag}-{digest}"

    def wants(self, event_type: str, system: str) -> bool:
        return (self.events is None or event_type in self.events) and (self.systems is None or system in self.systems)


class WebhookSink(_Sink, tag="webhook", kw_only=True):
    secret: Secret = msgspec.field(default_factory=Secret)


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


Sink = WebhookSink | MqttSink
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

    def system(self, name: str) -> SystemConfig | None:
        """The configured system of this name."""
        return next((s for s in self.systems if s.name == name), None)

    def sink(self, key: str) -> Sink | None:
        """The configured sink of this key (`_Sink.key`)."""
        return next((s for s in self.sinks if s.key == key), None)

    def secrets(self) -> list[str]:
        """Every secret value in this config, for the log redaction filter."""
        values = [self.server.admin_token.reveal(), self.server.stream_token.reveal()]
        for system in self.systems:
            values += [system.signing_token.reveal(), system.api_token.reveal()]
        values += [sink.secret.reveal() for sink in self.sinks if isinstance(sink, WebhookSink)]
        return [v for v in values if v]


def config_path(explicit: str | None = None) -> Path:
    """The config file to use: `--config`, else $PKRELAY_CONFIG, else ./pkrelay.toml.

    Only the default may be absent (every default applies); a file the user named
    that does not exist is a mistake, not a request for defaults.
    """
    named = explicit or os.environ.get(CONFIG_ENV)
    path = Path(named or DEFAULT_CONFIG)
    if named and not path.is_file():
        raise ConfigError(f"{path}: no such config file (`pkrelay init` writes a starter one)")
    return path


def load(path: Path, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read `path` (absent means all defaults), apply env overrides, decode strictly."""
    return _load(path, environ, [])


def _load(path: Path, environ: Mapping[str, str], files: list[Path]) -> Settings:
    """The settings; `files` gets every `file:` secret named (to watch them, even
    when one of them cannot be read yet).

    Relative paths are resolved here, once, against the config file's directory (the
    working directory without a file), so every process and child agrees on them.
    """
    exists = path.is_file()
    base = path.resolve().parent if exists else Path.cwd()
    text = path.read_text() if exists else ""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _apply_env_overrides(raw, environ)
    try:
        raw = _resolve_refs(raw, environ, base, files, [])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        settings = msgspec.convert(raw, Settings, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(str(exc), text)}") from None
    try:
        _check(settings)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    data_dir = (base / settings.data_dir).resolve()
    return msgspec.structs.replace(settings, data_dir=str(data_dir))


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Secret:
        if isinstance(value, str):
            return Secret(value)
        raise TypeError(f"Expected `str`, got `{type(value).__name__}`")
    raise NotImplementedError


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    hints = typing.get_type_hints(Settings)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        section, _, field = key.partition("__")
        if not field:
            if section == "data_dir":
                raw[section] = value
            elif section == "log_level":
                raw[section] = value.lower()
            continue
        section_type = hints.get(section)
        is_section = isinstance(section_type, type) and issubclass(section_type, _Section)
        field_type = typing.get_type_hints(section_type).get(field) if is_section else None
        if field_type is None:
            raise ConfigError(f"environment variable {name} names no setting [{section}] {field}")
        if field_type is not Secret and field_type is not str:
            try:
                value = msgspec.convert(value, field_type, strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"environment variable {name}: {exc}") from None
        raw.setdefault(section, {})[field] = value


def _resolve_refs(node: Any, environ: Mapping[str, str], base: Path, files: list[Path], path: list[str]) -> Any:
    """Replace every "env:NAME" string by the variable's value and every "file:PATH"
    by the file's content (trailing newline stripped; relative to `base`)."""
    if isinstance(node, dict):
        return {k: _resolve_refs(v, environ, base, files, [*path, k]) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, environ, base, files, [*path, str(i)]) for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith("env:"):
        var = node[4:]
        if var not in environ:
            raise ConfigError(f"{'.'.join(path)} refers to environment variable {var}, which is not set")
        return environ[var]
    if isinstance(node, str) and node.startswith("file:"):
        file = base / node[5:]
        files.append(file)
        try:
            return file.read_text().removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable as text"
            raise ConfigError(f"{'.'.join(path)}: its file cannot be read ({reason})") from None
    return node


def _check(settings: Settings) -> None:
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


def _valid_secret(value: str) -> bool:
    """A Standard Webhooks secret: whsec_ + a non-empty base64 key."""
    if not value.startswith("whsec_"):
        return False
    try:
        return bool(base64.b64decode(value.removeprefix("whsec_"), validate=True))
    except binascii.Error:
        return False


_PATH_PART = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _describe(message: str, text: str) -> str:
    """Turn msgspec's "... - at `$.a[0].b`" into a message with the TOML line."""
    match = re.search(r"^(.*?)(?: - at `(\$[^`]*)`)?$", message)
    assert match is not None
    detail, where = match.group(1), match.group(2) or "$"
    path: list[str | int] = [m.group(1) or int(m.group(2)) for m in _PATH_PART.finditer(where)]
    unknown = re.search(r"unknown field `([^`]+)`", detail)
    if unknown:
        path.append(unknown.group(1))
    key = ".".join(str(p) for p in path) or "(top level)"
    if _QUOTED_VALUE.search(detail):  # the value may be a secret pasted in the wrong place
        choices = _choices(path)
        detail = f"must be one of {', '.join(choices)}" if choices else "invalid value"
    line = _line_of(text, path)
    return f"{key}: {detail}" + (f" (line {line})" if line else "")


_QUOTED_VALUE = re.compile(r"Invalid (?:enum )?value")


def _choices(path: list[str | int]) -> list[str]:
    """The allowed values of the setting at `path` (a Literal, or a sink's type)."""
    kind: Any = Settings
    for part in path:
        if isinstance(part, int):
            kind = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            members = typing.get_args(kind)
            if part == "type":
                return [m.__struct_config__.tag for m in members]
            kind = members[0]
        hints = typing.get_type_hints(kind, include_extras=False) if isinstance(kind, type) else {}
        if part not in hints:
            return []
        kind = hints[part]
    return [str(v) for v in typing.get_args(kind)] if typing.get_origin(kind) is Literal else []


def _line_of(text: str, path: list[str | int]) -> int | None:
    table: list[str | int] = []
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = header.group(2)
            if header.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                table = [*name.split("."), counts[name]]
            else:
                table = list(name.split("."))
            if table == path or (table[:-1] == path and isinstance(table[-1], int)):
                return number
            continue
        key = _KEY.match(line)
        if key and [*table, key.group(1)] == path:
            return number
    return None


class LiveSettings:
    """The settings of a running process: systems and sinks follow the file.

    The owner pastes a new signing token while the bot waits for confirmation, so
    systems and sinks must change without a restart. Other sections need one.
    """

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.current = settings
        self._files: list[Path] = []
        try:
            _load(path, os.environ, self._files)
        except ConfigError:
            pass  # the caller loaded `settings` already; only the file list is wanted here
        self._stamp = self._stat()

    def _stat(self) -> tuple[tuple[int, int] | None, ...]:
        """The config file's stamp and those of its `file:` secrets."""
        stamps: list[tuple[int, int] | None] = []
        for path in (self.path, *self._files):
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def changed(self) -> bool:
        return self._stat() != self._stamp

    def reload(self) -> Settings:
        """Re-read the file (and its `file:` secrets); on error keep the running settings and raise."""
        self._files = []
        try:
            fresh = _load(self.path, os.environ, self._files)
        finally:
            self._stamp = self._stat()
        self.current = msgspec.structs.replace(self.current, systems=fresh.systems, sinks=fresh.sinks)
        return fresh

    async def watch(self, on_change: typing.Callable[[Settings], None], interval: float = 1.0) -> None:
        """Poll the file's stamp; cheap, and works on every filesystem and editor."""
        import asyncio
        import logging

        log = logging.getLogger("pkrelay.config")
        while True:
            await asyncio.sleep(interval)
            if not self.changed():
                continue
            try:
                fresh = self.reload()
            except ConfigError as exc:
                log.error("config not reloaded, keeping the running one: %s", exc)
                continue
            log.info("config reloaded: %d systems, %d sinks", len(fresh.systems), len(fresh.sinks))
            on_change(fresh)
