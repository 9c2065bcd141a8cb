"""`--since`: an ISO 8601 time with its zone, or a duration back from now (`10m`, `2h`, `1d`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The time `text` names; ValueError saying what is accepted."""
    if match := _DURATION.match(text):
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} needs a time zone, e.g. 2026-11-22T18:00:00Z")
    return when
