"""The Lua scripts that write arq's job layout for many jobs in one atomic round trip.

They rely on arq's key layout (a job key holding the serialized job, the id in the
queue's sorted set, in-progress and result keys), which tests/test_internals.py pins.
"""

from __future__ import annotations

from pkrelay.lua import Script

# arq's job layout (a job key holding the serialized job, the id in the queue's sorted
# set) written for a whole batch by one atomic command, with each event's place in its
# system's pending set: one request to pack and one reply to parse, where MULTI/EXEC
# costs two of each per command.
ENQUEUE = Script("""
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
""")


# arq's `enqueue_job` for many jobs in one atomic round trip, with its job-id dedup: a
# job is written unless it has a result, or its job key and a place in the queue or an
# in-progress mark (a job queued, deferred, running or finished is left alone; a job
# key that is neither queued nor in progress was orphaned by a taker that died).
# A job may name a holder, an earlier job of the same call that will do its work: it
# is then not queued but marked in progress with the holder's id (held, so the sweep
# leaves it), and the holder takes it when it runs. If the holder was not written
# (it exists already and will not know of it), the job is queued as any other.
ENQUEUE_UNIQUE = Script("""
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
""")


# Jobs taken over by a running job, which does their work with its own: each held for
# it, or due and not yet started, is marked in progress (with the taker's id) as arq
# marks the jobs it starts, and leaves the queue: held, so the sweep leaves it, and a
# worker starting it at this very moment fails its WATCH and skips it. Should the
# taker die, arq runs it again once its own mark expires, and it takes them again;
# should that never happen, their marks expire too and the sweep enqueues them.
TAKE_OVER = Script("""
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
""")


# Taken jobs finished: done ones gone (job key and mark), the others back in the queue
# at their retry time, as arq's own Retry puts them.
RELEASE = Script("""
local now, in_progress, job, n = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
for i = 5, 4 + n do
  redis.call('DEL', job .. ARGV[i], in_progress .. ARGV[i])
end
for i = 5 + n, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i])
  redis.call('DEL', in_progress .. ARGV[i])
end
return n
""")


# Events logged: out of their system's pending set, and the ingest jobs still waiting
# for them withdrawn, since each would only find its event logged (under a backlog
# one job logs a batch of 50, and the other 49 cost a worker five round trips each
# for nothing). A job already running is left to finish. Setting its in-progress key
# also fails the WATCH of a worker that is starting the job at this very moment (arq
# then skips it as started elsewhere), so no job ever runs without its job key.
LOGGED = Script("""
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
""")
