"""The event envelope integrations receive (docs/contract.md, "The event stream")."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_last = (0, 0)


def new_event_id(ms: int | None = None) -> str:
    """`evt_` + a monotonic ULID: ids sort by arrival, so the log keeps arrival order.

    Within one millisecond the random part is incremented (as the ULID spec's
    monotonic mode does), so two events of the same millisecond still sort in order.
    """
    global _last
    ms = time.time_ns() // 1_000_000 if ms is None else ms
    last_ms, last_random = _last
    if ms <= last_ms:
        ms, random = last_ms, last_random + 1
    else:
        random = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
    _last = (ms, random)
    value = (ms << 80) | random
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "evt_" + "".join(reversed(chars))


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Event(msgspec.Struct, kw_only=True):
    id: str
    type: str
    source: Literal["dispatch", "poll"]
    system_id: str | None
    entity_id: str | None
    received_at: datetime
    data: Any = None
    entity: Any = None
    previous: Any = None
