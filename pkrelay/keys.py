"""pkrelay's Redis key space, in one place (as arq's `constants.py` holds arq's).

Every key starts with `pkrelay:` so a Redis shared with other software stays
readable; systems are named by their configured name, tokens only by a hash.
"""

from __future__ import annotations

from typing import Literal

PREFIX = "pkrelay"

PollKey = Literal["last", "lease", "unregistered", "webhook_checked", "token_rejected"]

# When each poll check of each system is next due: a sorted set of `{system}:{check}`
# scored by UNIX time (workers/schedule.py); a check being run is scored at its
# claim's expiry.
POLL_DUE = f"{PREFIX}:poll:due"


# The registration PINGs the receivers answered, newest first (the dashboard's
# "connect a system" page).
PINGS = f"{PREFIX}:dashboard:pings"

# Each system's UUID as learned from the API or its first verified dispatch (pkrelay/pins.py).
PINS = f"{PREFIX}:pins"


def pending(system: str) -> str:
    """A system's events not yet logged, oldest first (a sorted set of event ids)."""
    return f"{PREFIX}:pending:{system}"


def payloads(system: str) -> str:
    """The payloads of a system's pending events, so any worker can log them in order."""
    return f"{PREFIX}:payloads:{system}"


def system_lock_name(system: str) -> str:
    return f"{PREFIX}:lock:{system}"


def poll(system: str, what: PollKey) -> str:
    """The poller's bookkeeping of a system: when it was last polled, who polls it now
    (lease), whether its webhook is registered elsewhere (and whether that was ever
    checked), whether PluralKit refuses its api_token."""
    return f"{PREFIX}:poll:{what}:{system}"


def poll_calls(system: str, minute: int) -> str:
    """API calls spent polling a system in one minute (UNIX time // 60)."""
    return f"{PREFIX}:poll:calls:{system}:{minute}"


def rate_limit(scope: str, token_hash: str) -> tuple[str, str]:
    """The limiter's sliding log of one (scope, token) and its pause flag."""
    base = f"{PREFIX}:rl:{scope}:{token_hash}"
    return base, base + ":pause"


def mqtt(sink: str, system_id: str, what: Literal["front", "components", "migrated", "debounce"]) -> str:
    """An MQTT sink's memory of a system, shared by its workers: the fronters it last
    published (so a switch event fires once), the discovery components it ever
    announced (so removed ones are cleared), whether the pre-device-discovery config
    was migrated, and the burst of switches it is waiting out."""
    return f"{PREFIX}:mqtt:{sink}:{system_id}:{what}"


def auth_failures(address: str) -> str:
    """The failed logins and wrong Bearer tokens of one client address in the last
    window (a sorted set scored by UNIX time), shared by every receiver."""
    return f"{PREFIX}:auth:failures:{address}"


def session_revoked(session_hash: str) -> str:
    """A dashboard session that logging out ended (named by a hash of its id), kept
    until the session's own expiry."""
    return f"{PREFIX}:dashboard:revoked:{session_hash}"


def sink_failing(sink: str) -> str:
    """Set while a sink's deliveries fail (the first failure's error), so one warning
    says it is failing and one line says it recovered, whichever worker sees each."""
    return f"{PREFIX}:sink:failing:{sink}"
