"""What travels through Redis between the receiver and the workers.

The receiver enqueues arq jobs itself in one MULTI/EXEC round trip (arq's own
`enqueue_job` spends three: WATCH, EXISTS, MULTI/EXEC, to make job ids unique).
Our job ids are fresh event ids, so the uniqueness check buys nothing on this path,
and the workers' insert-or-ignore on the event id absorbs the rare duplicate (a reply
lost after Redis executed the transaction, then the spool enqueuing it again).
"""

from __future__ import annotations

import time

import msgspec
from arq.constants import default_queue_name, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

# Jobs wait for a worker this long before Redis forgets them: a year, so a worker
# fleet that is down for a weekend loses nothing (arq's default is one day).
JOB_EXPIRY_MS = 365 * 24 * 3600 * 1000
INGEST_JOB = "ingest_dispatch"


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


async def enqueue(redis: Redis, items: list[tuple[str, bytes]], function: str = INGEST_JOB) -> None:
    """Enqueue (job id, payload) pairs as arq jobs in a single round trip."""
    now = int(time.time() * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        for job_id, payload in items:
            job = serialize_job(function, (payload,), {}, None, now)
            pipe.psetex(job_key_prefix + job_id, JOB_EXPIRY_MS, job)
            pipe.zadd(default_queue_name, {job_id: now})
        await pipe.execute()


async def depth(redis: Redis) -> int:
    return int(await redis.zcard(default_queue_name))
