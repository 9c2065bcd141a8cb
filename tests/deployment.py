"""pkrelay.toml for a test, from a dict written with tomli_w, and a migrated Deployment on it.

Tests that are about the text of a config file (syntax, unknown keys, line numbers,
comments) write that text themselves; every other test builds its config here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from pkrelay.redis_server import EmbeddedRedis
from tests.fakepk.api import FakePluralKit
from tests.harness import Deployment

CLOSED_API = "http://127.0.0.1:9/v2"  # a closed local port: tests never reach the internet


def settings_with_defaults(path: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` over the tests' defaults: data_dir beside the file, the PluralKit API on a
    closed port with the tests' user agent; a section given is merged key by key."""
    merged: dict[str, Any] = {"data_dir": path.parent / "data",
                              "pluralkit": {"api_base_url": CLOSED_API, "user_agent": "pkrelay-tests"}}
    for key, value in settings.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return _plain(merged)


def _plain(value: Any) -> Any:
    """Paths as strings, tuples as lists: what TOML has."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def write_config(path: Path, settings: Mapping[str, Any] | None = None) -> Path:
    """A pkrelay.toml at `path` from `settings`: top-level keys, the sections `server`,
    `pluralkit`, `redis`, `database`, `delivery` (dicts) and the lists `systems`, `sinks`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(settings_with_defaults(path, settings or {})))
    return path


def add_to_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """The config at `path` with `settings` added: a section merged key by key, a list
    (systems, sinks) extended, any other key replaced."""
    current = tomllib.loads(path.read_text())
    for key, value in _plain(settings).items():
        if isinstance(value, dict):
            current[key] = {**current.get(key, {}), **value}
        elif isinstance(value, list):
            current[key] = current.get(key, []) + value
        else:
            current[key] = value
    return write_config(path, current)


def webhook_sink(url: str, secret: str = "", **more: Any) -> dict[str, Any]:
    """A `[[sinks]]` entry of type webhook."""
    return {"type": "webhook", "url": url, "secret": secret, **more}


async def deploy(directory: Path, redis_server: EmbeddedRedis, fake: FakePluralKit | None = None,
                 systems: list[dict[str, str]] | None = None, **settings: Any) -> Deployment:
    """A Deployment on directory/pkrelay.toml, its schema migrated: these `systems`, the API of
    `fake` (else a closed port), and any other `settings` (sections, sinks...) as given."""
    if fake is not None:
        settings["pluralkit"] = {"api_base_url": fake.base_url, **settings.get("pluralkit", {})}
    dep = Deployment(write_config(directory / "pkrelay.toml", {"systems": systems or [], **settings}), redis_server.url)
    await dep.migrate()
    return dep
