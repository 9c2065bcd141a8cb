"""When each poll check of a system is due, and who may poll it.

| check    | poll cadence (s, at poll_budget 1) | auto (reconciliation) |
|----------|------------------------------------|-----------------------|
| fronters | 2                                  | 60                    |
| switch   | 5 (newest 100)                     | 100                   |
| member   | 10                                 | 100                   |
| group    | 10 (with members)                  | 100                   |
| system   | 20                                 | 100 (also checks `webhook_url`) |
| settings | 20                                 | 100                   |

Poll cadences sum to 1 GET/s and scale with `pluralkit.poll_budget`. An `auto`
system whose webhook no longer points here is polled at the poll cadence.

Every system's checks share one sorted set of due times (keys.POLL_DUE), so a tick
costs what is due, not the number of systems: it claims the checks due by now in one
atomic step (their score becomes the claim's expiry, so no other worker takes them,
and a dead worker's claims come due again CLAIM_S later), runs them, and then sets
each one's next due time, unless something moved it meanwhile (a sign of lost
events, a change of cadence), which then stands. A system's first poll is due at once:
it is the baseline everything later is compared with. From the second on (and after
any run far behind its time), each check keeps a phase of its system's, drawn from a
hash of its name over its period, so the checks of many systems are spread over their
period instead of firing together.
A Redis lease per system keeps one poll at a time whatever the number of workers, and
expires LEASE_S after its last call if its worker dies.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from pkrelay import keys
from pkrelay.config import Settings, SystemConfig
from pkrelay.lua import Script
from pkrelay.store.state import Kind

POLL_CADENCE = {Kind.FRONTERS: 2.0, Kind.SWITCH: 5.0, Kind.MEMBER: 10.0, Kind.GROUP: 10.0, Kind.SYSTEM: 20.0,
                Kind.SETTINGS: 20.0}
# Every check within the contract's two minutes for recovering a lost dispatch, with
# room for the tick and the work.
AUTO_CADENCE = {Kind.FRONTERS: 60.0, Kind.SWITCH: 100.0, Kind.MEMBER: 100.0, Kind.GROUP: 100.0,
                Kind.SYSTEM: 100.0, Kind.SETTINGS: 100.0}
# A dead poller's lease lapses this long after its last call; each call renews it.
LEASE_S = 15
# Checks claimed by a worker that died come due again this long after their claim.
CLAIM_S = 30.0
# Ticks come once a second, give or take: a check due before the next tick runs now.
AHEAD_S = 0.5
# Never polled: due at once (a score no clock reads as a time).
FIRST = 0.0

# Claim what is due by ARGV[1], at most ARGV[3] checks: each is scored ARGV[2] (the
# claim's expiry) and returned with the score it had.
_CLAIM = Script("""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], ARGV[2], due[i]) end
return due
""")
# The next due times of a claim's checks (ARGV[2..]: member, score or '-' to drop it),
# each only while it still holds the claim's score ARGV[1].
_FINISH = Script("""
local claim = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == claim then
    if ARGV[i + 1] == '-' then redis.call('ZREM', KEYS[1], ARGV[i])
    else redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i]) end
  end
end
return 0
""")


def member(system: str, check: Kind) -> str:
    """A check's member of the sorted set: by system first, so checks due at the same
    time are claimed system by system."""
    return f"{system}:{check}"


@dataclass
class Claim:
    """Checks this worker claimed: by system, each with the time it was due."""

    score: float
    due: dict[str, dict[Kind, float]]

    def __len__(self) -> int:
        return sum(len(checks) for checks in self.due.values())


async def claim(redis: Redis, now: float, limit: int) -> Claim:
    """Claim at most `limit` checks due by the next tick, atomically: no other worker
    gets them until they are finished or CLAIM_S have passed."""
    score = now + CLAIM_S
    raw = await _CLAIM(redis, [keys.POLL_DUE], [repr(now + AHEAD_S), repr(score), limit])
    due: dict[str, dict[Kind, float]] = {}
    for name, at in zip(raw[::2], raw[1::2], strict=True):
        system, _, check = name.decode().rpartition(":")
        due.setdefault(system, {})[Kind(check)] = float(at)
    return Claim(score, due)


async def finish(redis: Redis, claimed: Claim, system: str, next_due: Mapping[Kind, float | None]) -> None:
    """Each claimed check of `system` next due at its time (None: no longer polled),
    unless its score was moved since the claim."""
    args: list[object] = [repr(claimed.score)]
    for check, at in next_due.items():
        args += [member(system, check), "-" if at is None else repr(at)]
    await _FINISH(redis, [keys.POLL_DUE], args)


def phase(system: str) -> float:
    """A fraction in [0, 1) fixed for this system: checks of one cadence stay together
    (one poll, one look at the store), those of different systems apart."""
    digest = hashlib.sha256(system.encode()).digest()
    return int.from_bytes(digest[:4]) / 2**32


def next_due(system: str, check: Kind, due: float, now: float, period: float) -> float:
    """When a check that was due at `due` and ran at `now` is due again."""
    if due == FIRST or now - period >= due:
        # The first run, or one far behind (a worker down for a while): the next comes up
        # to a period early, by the system's phase (but not within 1.5 s, so a 2-s check
        # keeps every other tick). So systems polled at the same moment part again.
        return now + period - phase(system) * max(period - 1.5, 0.0)
    # From when it was due, not from now: the average interval stays the cadence however
    # the ticks fall, so the budget holds on average.
    return due + period


def polled(systems: Iterable[SystemConfig]) -> list[SystemConfig]:
    """The systems the poller has work for: not webhook-only, and with a way to name them."""
    return [s for s in systems if s.mode != "webhook" and (s.system_id or s.api_token)]


async def sync(redis: Redis, settings: Settings) -> None:
    """Schedule every polled system's checks that are not scheduled yet (due at once).
    Checks of systems no longer polled are dropped by whoever claims them next."""
    wanted = {member(s.name, check): FIRST for s in polled(settings.systems) for check in Kind}
    if wanted:
        await redis.zadd(keys.POLL_DUE, wanted, nx=True)


async def due_at(redis: Redis, system: str, when: Mapping[Kind, float]) -> None:
    """Move scheduled checks of `system` to these times (a claim in flight keeps them)."""
    if when:
        await redis.zadd(keys.POLL_DUE, {member(system, check): at for check, at in when.items()}, xx=True)


async def reconcile_soon(redis: Redis, system: str) -> None:
    """A sign of lost events: every check of this system is due at the next tick."""
    await due_at(redis, system, dict.fromkeys(Kind, time.time()))


async def cadence(redis: Redis, system: SystemConfig, budget: float) -> dict[Kind, float] | None:
    """Seconds between checks of each kind, or None when the system is not polled."""
    if system.mode == "webhook":
        return None
    if system.mode == "poll" or await redis.exists(keys.poll(system.name, "unregistered")):
        return {check: seconds / budget for check, seconds in POLL_CADENCE.items()}
    return AUTO_CADENCE


async def due_soon(redis: Redis, system: str, checks: set[Kind], now: float, seconds: float) -> None:
    """These checks run again `seconds` from now, whatever their cadence: their answers
    could not be used (a dispatch moved what they cover while they were fetched)."""
    await due_at(redis, system, dict.fromkeys(checks, now + seconds))


def lease(redis: Redis, system: str) -> Lock:
    return redis.lock(keys.poll(system, "lease"), timeout=LEASE_S)


def holder() -> str:
    """A lease token naming its worker (host:pid), for whoever looks at the key."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def release(lock: Lock) -> None:
    try:
        await lock.release()
    except LockError:  # expired: another worker may hold it now, which is fine
        pass


async def count_call(redis: Redis, system: str) -> None:
    """One API call spent polling, counted per minute for the budget shown by status."""
    key = keys.poll_calls(system, int(time.time() // 60))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, 180)
        await pipe.execute()
