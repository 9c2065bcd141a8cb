"""Each system's pinned UUID: the one system a signing token may speak for.

A dispatch names its system by UUID, and nothing but the signing token vouches for
it. So every system's UUID is pinned, from the first source there is: `system_id` in
the config; else what `GET /systems/@me` answers for its `api_token` (authoritative:
it replaces a pin learned otherwise); else its first verified dispatch. A dispatch
that names another UUID than its system's pin, or a UUID pinned to another system, is
refused: one owner cannot write into another's events or state.

Learned pins live in one Redis hash (persistent, shared by every receiver and worker);
receivers keep a copy refreshed every `REFRESH_S`, so checking a pin costs no round
trip on the path of a dispatch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from pkrelay import keys
from pkrelay.config import SystemConfig
from pkrelay.lua import Script

REFRESH_S = 1.0

# Pin ARGV[2] to field ARGV[1] unless the field is pinned already or another field
# holds that UUID; returns the field's pin, or "" when another system holds the UUID.
_PIN_FIRST = Script("""
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then return current end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[2] then return '' end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
""")

# The API's word: pin field ARGV[1] to ARGV[2], unpinning any other field that held it
# (its pin came from a dispatch that named a UUID not its own).
_PIN_AUTHORITATIVE = Script("""
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[2] and all[i] ~= ARGV[1] then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""")


async def learned(redis: Redis) -> dict[str, str]:
    """Every learned pin: system name -> UUID."""
    return decoded(await redis.hgetall(keys.PINS))


def decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    """`learned` from the raw HGETALL of keys.PINS (e.g. answered in a pipeline)."""
    return {k.decode(): v.decode() for k, v in raw.items()}


async def claim(redis: Redis, system: str, uuid: str) -> str | None:
    """Pin `system` to `uuid` from a verified dispatch unless it is pinned already;
    returns its pin, or None when `uuid` is another system's."""
    found = await _PIN_FIRST(redis, [keys.PINS], [system, uuid])
    return found.decode() or None


async def pin_from_api(redis: Redis, system: str, uuid: str) -> None:
    """Pin `system` to what the API says is its UUID."""
    await _PIN_AUTHORITATIVE(redis, [keys.PINS], [system, uuid])


def pinned(system: SystemConfig, learned_pins: dict[str, str]) -> str | None:
    """The system's UUID as far as pkrelay knows it: configured, else learned."""
    return system.system_id or learned_pins.get(system.name) or None


def refusal(system: SystemConfig, system_id: str | None, systems: Sequence[SystemConfig],
            learned_pins: dict[str, str]) -> str | None:
    """Why `system`'s token may not speak for `system_id`, or None when it may."""
    if system_id is None:
        return None  # older senders name no system on account events: it is the token's own
    own = pinned(system, learned_pins)
    if own is not None and own != system_id:
        return "the dispatch names another system than its signing token's"
    for other in systems:
        if other.name != system.name and pinned(other, learned_pins) == system_id:
            return "the dispatch names another configured system"
    return None


class Pins:
    """A receiver's copy of the learned pins, refreshed at most every REFRESH_S."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.current: dict[str, str] = {}
        self._read_at = float("-inf")

    async def refresh(self) -> dict[str, str]:
        """The pins, read again when the copy is older than REFRESH_S; the copy as it
        is when Redis cannot answer (a spooling receiver still checks what it knows)."""
        if time.monotonic() - self._read_at >= REFRESH_S:
            try:
                self.current = await learned(self.redis)
            except (RedisError, OSError):
                pass
            self._read_at = time.monotonic()
        return self.current

    async def pin_first(self, system: str, uuid: str) -> str | None:
        """Pin an unpinned system from its first verified dispatch; why the dispatch is
        refused, or None. With Redis away the dispatch is kept (and spooled) unpinned:
        a later one pins it."""
        try:
            found = await claim(self.redis, system, uuid)
        except (RedisError, OSError):
            return None
        if found is None:
            return "the dispatch names another configured system"
        self.current[system] = found
        return None if found == uuid else "the dispatch names another system than its signing token's"
