"""The settings users touch: one TOML file, decoded strictly, with env overrides.

Decoding is strict so a typo is an error naming the key and its line rather than a
setting silently ignored. Secrets are wrapped in `Secret`, whose repr and str never
show the value, so they cannot leak through logs or error messages by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tomllib
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
    # Where each `pkrelay worker` serves its own /metrics when it runs apart from a
    # receiver (0: off). Under `pkrelay run` the receiver's /metrics includes the worker.
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0


class PluralKitConfig(_Section):
    api_base_url: str = "https://api.pluralkit.me/v2"
    user_agent: str = "pkrelay (+https://example.invalid/contact)"
    get_rate: float = 10
    update_rate: float = 3
    message_rate: float = 10
    poll_budget: float = 1.0


class RedisConfig(_Section):
    url: str = ""


class DatabaseConfig(_Section):
    url: str = ""
    retention_days: int = 30  # the event log keeps this many days; pruned hourly


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

    @property
    def key(self) -> str:
        """A stable name for this sink in the database and metrics, without its URL
        (URLs can carry secrets, e.g. Home Assistant webhook ids)."""
        topic = getattr(self, "topic_prefix", "")
        digest = hashlib.sha256(f"{self.url}|{topic}".encode()).hexdigest()[:12]
        return f"{self.__struct_config__.tag}-{digest}"

    def wants(self, event_type: str, system: str) -> bool:
        return (self.events is None or event_type in self.events) and (self.systems is None or system in self.systems)


class WebhookSink(_Sink, tag="webhook", kw_only=True):
    secret: Secret = msgspec.field(default_factory=Secret)


class MqttSink(_Sink, tag="mqtt", kw_only=True):
    topic_prefix: str = "pkrelay"
    homeassistant_discovery: bool = True


Sink = WebhookSink | MqttSink


class Settings(_Section):
    data_dir: str = "./data"
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    pluralkit: PluralKitConfig = msgspec.field(default_factory=PluralKitConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    systems: list[SystemConfig] = msgspec.field(default_factory=list)
    sinks: list[Sink] = msgspec.field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{(self.data_path / 'pkrelay.db').resolve()}"

    def secrets(self) -> list[str]:
        """Every secret value in this config, for the log redaction filter."""
        values = [self.server.admin_token.reveal(), self.server.stream_token.reveal()]
        for system in self.systems:
            values += [system.signing_token.reveal(), system.api_token.reveal()]
        values += [sink.secret.reveal() for sink in self.sinks if isinstance(sink, WebhookSink)]
        return [v for v in values if v]


def config_path(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load(path: Path, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read `path` (absent means all defaults), apply env overrides, decode strictly."""
    text = path.read_text() if path.exists() else ""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _apply_env_overrides(raw, environ)
    try:
        raw = _resolve_env_refs(raw, environ, [])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        settings = msgspec.convert(raw, Settings, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(str(exc), text)}") from None
    _check(settings)
    return settings


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


def _resolve_env_refs(node: Any, environ: Mapping[str, str], path: list[str]) -> Any:
    """Replace every "env:NAME" string by the variable's value."""
    if isinstance(node, dict):
        return {k: _resolve_env_refs(v, environ, [*path, k]) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_env_refs(v, environ, [*path, str(i)]) for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith("env:"):
        var = node[4:]
        if var not in environ:
            raise ConfigError(f"{'.'.join(path)} refers to environment variable {var}, which is not set")
        return environ[var]
    return node


def _check(settings: Settings) -> None:
    names = [s.name for s in settings.systems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"systems: duplicate name {dupes[0]!r}")
    if not settings.server.dispatch_path.startswith("/"):
        raise ConfigError("server.dispatch_path must start with '/'")
    for sink in settings.sinks:
        unknown = sorted(set(sink.systems or ()) - set(names))
        if unknown:
            raise ConfigError(f"sinks: systems names unknown system {unknown[0]!r}")


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
    line = _line_of(text, path)
    return f"{key}: {detail}" + (f" (line {line})" if line else "")


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
            if table == path or table[:-1] == path and isinstance(table[-1], int):
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
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        return self._stat() != self._stamp

    def reload(self) -> Settings:
        """Re-read the file; on error keep the running settings and raise."""
        self._stamp = self._stat()
        fresh = load(self.path)
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
