"""Upgrading in place: keys an earlier release accepted and this one no longer uses.

A config that worked with the previous release must still start after an upgrade,
so such a key is taken out of the raw TOML before strict decoding and named in one
WARNING (key and line) instead of failing. A key no release ever had stays an error:
only the keys declared here are forgiven. Each entry stays for at least two releases
after the one that removed it; then the key becomes an unknown one like any other.
"""

from __future__ import annotations

from typing import Any

from pkrelay.config.messages import line_of

# Dotted key (`*` for any entry of [[systems]] or [[sinks]]) -> the release that
# stopped using it.
REMOVED: dict[str, str] = {
    "pluralkit.message_rate": "0.2.0",  # messages are no longer fetched (4815aed)
}


def strip(raw: dict[str, Any], text: str) -> list[str]:
    """Remove every removed key from `raw`; one warning for each one found, naming
    the key and its line in `text`."""
    notes = []
    for dotted, release in REMOVED.items():
        for path in _pop(raw, dotted.split("."), []):
            key = ".".join(str(p) for p in path)
            line = line_of(text, path)
            where = f" (line {line})" if line else ""
            notes.append(f"`{key}`{where} is no longer used and is ignored (removed in {release})")
    return notes


def env_note(variable: str, section: str, field: str) -> str | None:
    """The warning for an env override naming a removed key; None for any other."""
    release = REMOVED.get(f"{section}.{field}")
    if release is None:
        return None
    return f"environment variable {variable}: `{section}.{field}` is no longer used and is ignored " \
           f"(removed in {release})"


def _pop(node: Any, pattern: list[str], at: list[str | int]) -> list[list[str | int]]:
    """Delete what `pattern` names under `node`; the full path of each deleted key."""
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        if not isinstance(node, list):
            return []
        return [p for i, item in enumerate(node) for p in _pop(item, rest, [*at, i])]
    if not isinstance(node, dict) or head not in node:
        return []
    if not rest:
        del node[head]
        return [[*at, head]]
    return _pop(node[head], rest, [*at, head])
