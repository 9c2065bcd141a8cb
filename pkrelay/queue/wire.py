"""The queue's wire format: what the receiver puts in an ingest job for the workers.

Encoded once by the receiver, decoded once by the worker (msgspec, MessagePack as an
array): the job holds the verified dispatch without its signing token.
"""

from __future__ import annotations

import msgspec

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
