"""What travels through Redis between the receiver and the workers: the wire format
(`wire`), the job operations (`jobs`) and the Lua they run (`scripts`).

The names both sides use are re-exported here, so callers say `queue.enqueue(...)`.
"""

from pkrelay.queue.jobs import Job, connect, depth, enqueue, enqueue_unique, logged, release, take_over
from pkrelay.queue.wire import (
    HOLD_MS,
    IN_PROGRESS_MS,
    INGEST_JOB,
    JOB_EXPIRY_MS,
    JOB_TIMEOUT_S,
    QueuedDispatch,
    decode,
    encode,
)

__all__ = [
    "HOLD_MS", "INGEST_JOB", "IN_PROGRESS_MS", "JOB_EXPIRY_MS", "JOB_TIMEOUT_S", "Job", "QueuedDispatch", "connect",
    "decode", "depth", "encode", "enqueue", "enqueue_unique", "logged", "release", "take_over",
]
