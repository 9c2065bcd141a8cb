"""Reading the file: which file, env overrides (`PKRELAY_<SECTION>__<KEY>`), the
`env:` and `file:` references, then strict decoding and the cross-field rules.

Relative paths are resolved here, once, so every process and child agrees on them.
"""

from __future__ import annotations

import logging
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from pkrelay.config import removed
from pkrelay.config.messages import describe
from pkrelay.config.schema import ConfigError, Secret, Settings, _Section, check

ENV_PREFIX = "PKRELAY_"
CONFIG_ENV = "PKRELAY_CONFIG"
# Set by `pkrelay run` for its children: it gave the removed-key warnings once, at its
# start; the receiver and worker loading the same file must not repeat them.
WARNED_ENV = "PKRELAY_CONFIG_WARNED"
DEFAULT_CONFIG = "pkrelay.toml"

log = logging.getLogger("pkrelay.config")


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
    """Read `path` (absent means all defaults), apply env overrides, decode strictly;
    log a WARNING for each key that an earlier release had and this one ignores."""
    notes: list[str] = []
    settings = read(path, environ, [], notes)
    if not environ.get(WARNED_ENV):
        for note in notes:
            log.warning("%s", note)
    return settings


def read(path: Path, environ: Mapping[str, str], files: list[Path], notes: list[str]) -> Settings:
    """The settings; `files` gets every `file:` secret named (to watch them, even
    when one of them cannot be read yet), `notes` the warnings about removed keys and
    `file:` secrets that do not exist yet (for the caller to log, as often as it sees fit).

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
    notes += [f"{path}: {note}" for note in removed.strip(raw, text)]
    _apply_env_overrides(raw, environ, notes)
    try:
        raw = _resolve_refs(raw, environ, base, files, [], notes)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        settings = msgspec.convert(raw, Settings, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {describe(str(exc), text)}") from None
    try:
        check(settings)
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


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str], notes: list[str]) -> None:
    hints = typing.get_type_hints(Settings)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, WARNED_ENV):
            continue
        key = name[len(ENV_PREFIX):].lower()
        section, _, field = key.partition("__")
        if not field:
            if section == "data_dir":
                raw[section] = value
            elif section == "log_level":
                raw[section] = value.lower()
            continue
        note = removed.env_note(name, section, field)
        if note:
            notes.append(note)
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


def _must_exist(path: list[str]) -> bool:
    """Secrets whose empty value weakens something (an open /metrics, unsigned deliveries):
    their `file:` must exist. Every other secret is empty until its file appears, which
    only turns its feature off (no dashboard, no webhooks accepted, public data only)."""
    return path == ["server", "metrics_token"] or (path[:1] == ["sinks"] and path[-1:] == ["secret"])


def _resolve_refs(node: Any, environ: Mapping[str, str], base: Path, files: list[Path], path: list[str],
                  notes: list[str]) -> Any:
    """Replace every "env:NAME" string by the variable's value and every "file:PATH"
    by the file's content (trailing newline stripped; relative to `base`); a file that
    does not exist yet is an empty secret and a note (`_must_exist` excepted)."""
    if isinstance(node, dict):
        return {k: _resolve_refs(v, environ, base, files, [*path, k], notes) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, environ, base, files, [*path, str(i)], notes) for i, v in enumerate(node)]
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
        except FileNotFoundError:
            key = ".".join(path)
            if _must_exist(path):
                raise ConfigError(f"{key}: its file {node[5:]} does not exist (an empty {path[-1]} would "
                                  f"{'leave /metrics open' if path[-1] == 'metrics_token' else 'send unsigned'})"
                                  ) from None
            notes.append(f"{key}: its file {node[5:]} ({file}) does not exist yet; {key} is empty until it does "
                         "(read again as soon as it appears)")
            return ""
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable as text"
            raise ConfigError(f"{'.'.join(path)}: its file cannot be read ({reason})") from None
    return node
