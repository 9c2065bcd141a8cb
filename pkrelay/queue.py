"""What travels through Redis between the receiver and the workers.

The receiver enqueues arq jobs itself in one round trip (arq's own `enqueue_job`
spends three: WATCH, EXISTS, MULTI/EXEC, to make job ids unique).
Our job ids are fresh event ids, so the uniqueness check buys nothing on this path,
and the workers' insert-or-ignore on the event id absorbs the rare duplicate (a reply
lost after Redis executed the transaction, then the spool enqueuing it again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from pkrelay import keys

# Jobs wait for a worker this long before Redis forgets them: a year, so a worker
# fleet that is down for a weekend loses nothing (arq's default is one day).
JOB_EXPIRY_MS = 365 * 24 * 3600 * 1000
INGEST_JOB = "ingest_dispatch"
# A job runs at most this long; arq marks a started job in progress for 10 s more, so
# one whose worker died runs again after that.
JOB_TIMEOUT_S = 60
IN_PROGRESS_MS = (JOB_TIMEOUT_S + 10) * 1000
# A job held for another (`Job.holder`) waits this long for it to run; then the sweep
# sees it as orphaned and enqueues it on its own.
HOLD_MS = 3600 * 1000


class QueuedDispatch(msgspec.Struct, array_like=True):
    """One verified dispatch, without its signing token."""

    event_id: str
    received_ms: int
    system: str
    type: str
    system_id: str | None
    entity_id: str | None
    data: bytes  # the `data` value as PluralKit sent it, JSON; b"null" when absent


encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(QueuedDispatch).decode


def connect(url: str, timeout: float = 1.0) -> Redis:
    """A client that fails fast, so a dead Redis sends events to the spool quickly."""
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False)


# arq's job layout (a job key holding the serialized job, the id in the queue's sorted
# set) written for a whole batch by one atomic command, with each event's place in its
# system's pending set: one request to pack and one reply to parse, where MULTI/EXEC
# costs two of each per command.
_ENQUEUE_LUA = """
local n = (#KEYS - 1) / 3
local expiry, score = ARGV[1], ARGV[2]
for i = 1, n do
  local id, payload = ARGV[2 + n + i], ARGV[2 + 2 * n + i]
  redis.call('PSETEX', KEYS[1 + i], expiry, ARGV[2 + i])
  redis.call('ZADD', KEYS[1], score, id)
  redis.call('ZADD', KEYS[1 + n + i], 0, id)
  redis.call('HSET', KEYS[1 + 2 * n + i], id, payload)
end
return n
"""


async def enqueue(redis: Redis, items: list[tuple[str, str, bytes]], function: str = INGEST_JOB) -> None:
    """Enqueue (event id, system, payload) as arq jobs, atomically, in one round trip."""
    now = int(time.time() * 1000)
    names = [default_queue_name, *(job_key_prefix + i for i, _, _ in items),
             *(keys.pending(s) for _, s, _ in items), *(keys.payloads(s) for _, s, _ in items)]
    jobs = [serialize_job(function, (payload,), {}, None, now) for _, _, payload in items]
    await redis.eval(_ENQUEUE_LUA, len(names), *names, JOB_EXPIRY_MS, now, *jobs, *(i for i, _, _ in items),
                     *(p for _, _, p in items))


# arq's `enqueue_job` for many jobs in one atomic round trip, with its job-id dedup: a
# job is written unless it has a result, or its job key and a place in the queue or an
# in-progress mark (a job queued, deferred, running or finished is left alone; a job
# key that is neither queued nor in progress was orphaned by a taker that died).
# A job may name a holder, an earlier job of the same call that will do its work: it
# is then not queued but marked in progress with the holder's id (held, so the sweep
# leaves it), and the holder takes it when it runs. If the holder was not written
# (it exists already and will not know of it), the job is queued as any other.
_ENQUEUE_UNIQUE_LUA = """
local n = (#KEYS - 1) / 2
local expiry, score, in_progress, hold = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local written, added = {}, 0
for i = 1, n do
  local id, holder = ARGV[4 + i], ARGV[4 + 2 * n + i]
  local held = redis.call('EXISTS', KEYS[1 + n + i]) == 1 or (redis.call('EXISTS', KEYS[1 + i]) == 1 and
    (redis.call('ZSCORE', KEYS[1], id) or redis.call('EXISTS', in_progress .. id) == 1))
  if not held then
    redis.call('PSETEX', KEYS[1 + i], expiry, ARGV[4 + n + i])
    if holder ~= '' and written[holder] then
      redis.call('PSETEX', in_progress .. id, hold, holder)
    else
      redis.call('ZADD', KEYS[1], score, id)
    end
    written[id] = true
    added = added + 1
  end
end
return added
"""


@dataclass(frozen=True)
class Job:
    """One arq job to enqueue: its id, the function's arguments, and the id of the
    job (earlier in the same call) that is to do its work, if one is."""

    id: str
    args: tuple[object, ...]
    holder: str = ""


async def enqueue_unique(redis: Redis, function: str, jobs: Sequence[Job], expiry_ms: int) -> int:
    """Enqueue jobs of `function` as arq's `enqueue_job` would, skipping ids that
    already have a job or a result, in one round trip; returns how many were new."""
    if not jobs:
        return 0
    now = int(time.time() * 1000)
    names = [default_queue_name, *(job_key_prefix + j.id for j in jobs), *(result_key_prefix + j.id for j in jobs)]
    serialized = [serialize_job(function, j.args, {}, None, now) for j in jobs]
    return int(await redis.eval(_ENQUEUE_UNIQUE_LUA, len(names), *names, expiry_ms, now,
                                in_progress_key_prefix, HOLD_MS, *(j.id for j in jobs), *serialized,
                                *(j.holder for j in jobs)))


# Jobs taken over by a running job, which does their work with its own: each held for
# it, or due and not yet started, is marked in progress (with the taker's id) as arq
# marks the jobs it starts, and leaves the queue: held, so the sweep leaves it, and a
# worker starting it at this very moment fails its WATCH and skips it. Should the
# taker die, arq runs it again once its own mark expires, and it takes them again;
# should that never happen, their marks expire too and the sweep enqueues them.
_TAKE_OVER_LUA = """
local now, in_progress, ttl, taker = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local taken = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local mark = redis.call('GET', in_progress .. id)
  local score = redis.call('ZSCORE', KEYS[1], id)
  if mark == taker or (not mark and score and tonumber(score) <= now) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('PSETEX', in_progress .. id, ttl, taker)
    taken[#taken + 1] = id
  end
end
return taken
"""


async def take_over(redis: Redis, taker: str, job_ids: list[str]) -> list[str]:
    """Take these jobs for the running job `taker` if they are held for it, or due and
    waiting; returns the ids taken."""
    if not job_ids:
        return []
    taken = await redis.eval(_TAKE_OVER_LUA, 1, default_queue_name, int(time.time() * 1000),
                             in_progress_key_prefix, IN_PROGRESS_MS, taker, *job_ids)
    return [i.decode() for i in taken]


# Taken jobs finished: done ones gone (job key and mark), the others back in the queue
# at their retry time, as arq's own Retry puts them.
_RELEASE_LUA = """
local now, in_progress, job, n = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
for i = 5, 4 + n do
  redis.call('DEL', job .. ARGV[i], in_progress .. ARGV[i])
end
for i = 5 + n, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i])
  redis.call('DEL', in_progress .. ARGV[i])
end
return n
"""


async def release(redis: Redis, done: Sequence[str] = (), retry: Mapping[str, float] | None = None) -> None:
    """Finish taken jobs: `done` ones removed, `retry` ones (job id -> seconds) queued again."""
    retry = retry or {}
    if not done and not retry:
        return
    pairs = [x for job_id, delay in retry.items() for x in (job_id, int(delay * 1000))]
    await redis.eval(_RELEASE_LUA, 1, default_queue_name, int(time.time() * 1000), in_progress_key_prefix,
                     job_key_prefix, len(done), *done, *pairs)


# Events logged: out of their system's pending set, and the ingest jobs still waiting
# for them withdrawn, since each would only find its event logged (under a backlog
# one job logs a batch of 50, and the other 49 cost a worker five round trips each
# for nothing). A job already running is left to finish. Setting its in-progress key
# also fails the WATCH of a worker that is starting the job at this very moment (arq
# then skips it as started elsewhere), so no job ever runs without its job key.
_LOGGED_LUA = """
local running, in_progress, job = ARGV[1], ARGV[2], ARGV[3]
local ids = {unpack(ARGV, 4)}
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
for _, id in ipairs(ids) do
  if id ~= running and redis.call('EXISTS', in_progress .. id) == 0 then
    redis.call('PSETEX', in_progress .. id, 10000, '1')
    redis.call('ZREM', KEYS[3], id)
    redis.call('DEL', job .. id)
  end
end
return #ids
"""


async def logged(redis: Redis, system: str, event_ids: list[str], running: str) -> None:
    """These events of `system` are logged: drop them from its pending set and withdraw
    their waiting ingest jobs, all but `running` (the job doing this), in one round trip."""
    await redis.eval(_LOGGED_LUA, 3, keys.pending(system), keys.payloads(system), default_queue_name, running,
                     in_progress_key_prefix, job_key_prefix, *event_ids)


async def depth(redis: Redis) -> int:
    return int(await redis.zcard(default_queue_name))


class Batcher:
    """Group commit: jobs enqueued while a round trip is in flight share the next one.

    Under load the receiver's cost is the Redis round trip, not the request; letting
    concurrent requests share one call keeps each answer one round trip away
    while the server does a fraction of the work. Nothing waits for a timer.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[tuple[tuple[str, str, bytes], asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def enqueue(self, event_id: str, system: str, payload: bytes) -> None:
        """Return once the job is in Redis; raise what the round trip raised."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((event_id, system, payload), future))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                error: Exception | None = None
                try:
                    await enqueue(self.redis, [item for item, _ in batch])
                except Exception as exc:  # every waiter learns of the failure
                    error = exc
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error) if error else future.set_result(None)
        finally:
            self._flushing = None
