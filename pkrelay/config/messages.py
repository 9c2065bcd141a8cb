"""msgspec's validation errors turned into messages a user can act on: the dotted
key, the TOML line it is on, and for a bad choice the allowed values (never the
value itself, which may be a secret pasted in the wrong place).
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

from pkrelay.config.schema import Settings

_PATH_PART = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def describe(message: str, text: str) -> str:
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
        choices = choices_of(path)
        detail = f"must be one of {', '.join(choices)}" if choices else "invalid value"
    line = line_of(text, path)
    return f"{key}: {detail}" + (f" (line {line})" if line else "")


_QUOTED_VALUE = re.compile(r"Invalid (?:enum )?value")


def choices_of(path: list[str | int]) -> list[str]:
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


def line_of(text: str, path: list[str | int]) -> int | None:
    """The line of the key or table at `path`, by reading the TOML's headers and keys."""
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

