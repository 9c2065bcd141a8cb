"""The queue between receiver and workers survives crashes on either side."""

from __future__ import annotations

import time

from pkrelay import queue
from pkrelay.envelope import new_event_id
from pkrelay.redis_server import EmbeddedRedis
from tests.harness import Deployment


def _job(i: int, system_id: str) -> tuple[str, str, bytes]:
    event_id = new_event_id()
    return event_id, "home", queue.encode(queue.QueuedDispatch(
        event_id=event_id, received_ms=int(time.time() * 1000), system="home", type="UPDATE_SYSTEM",
        system_id=system_id, entity_id=None, data=b'{"name":"n%d"}' % i,
    ))


async def test_the_embedded_server_killed_and_restarted_keeps_its_queued_jobs(
    deployment: Deployment, redis_server: EmbeddedRedis, system_creds: dict[str, str]
) -> None:
    redis = queue.connect(redis_server.url)
    await queue.enqueue(redis, [_job(i, system_creds["system_id"]) for i in range(50)])
    await redis.aclose()
    redis_server.kill()  # SIGKILL: no chance to flush anything on the way out
    redis_server.start()
    redis = queue.connect(redis_server.url)
    assert await queue.depth(redis) == 50
    await redis.aclose()
    await deployment.work()
    assert [r.data["name"] for r in await deployment.logged()] == [f"n{i}" for i in range(50)]


async def test_a_job_enqueued_twice_logs_one_event(deployment: Deployment, redis_server: EmbeddedRedis,
                                                   system_creds: dict[str, str]) -> None:
    job = _job(1, system_creds["system_id"])
    redis = queue.connect(redis_server.url)
    await queue.enqueue(redis, [job])
    await deployment.work()
    await queue.enqueue(redis, [job])  # e.g. a spooled event whose unlink was lost in a crash
    await deployment.work()
    await redis.aclose()
    rows = await deployment.logged()
    assert [r.id for r in rows] == [job[0]]
