"""API client benchmark: saturate the fake PluralKit server and measure the rate achieved.

Four processes share one token through the Redis limiter, as four workers would. The
figure is requests per second achieved over the configured rate (PluralKit's 10/s);
the limiter spreads `rate` requests evenly over 1.05 s on purpose (no bursts, and a
50 ms margin for network jitter), so 95.2% is the ceiling. Also printed: 429s seen (target 0) and
the most requests the server saw in any one second.

    python -m tests.bench.bench_client
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path

from pkrelay.redis_server import EmbeddedRedis
from tests.fakepk.api import FakePluralKit, max_in_any_second
from tests.test_pluralkit_client import _hammer

RATE = 10
PER_PROCESS = int(os.environ.get("BENCH_REQUESTS", "75"))


def main() -> None:
    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="pkrelay-bench-")))
    redis.start()
    fake = FakePluralKit(get_rate=RATE)
    fake.start()
    system = fake.add_system()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(fake.base_url, redis.url, system.token, system.uuid,
                                               PER_PROCESS, RATE)) for _ in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        fake.stop()
        redis.stop()
    times = sorted(j.at for j in fake.journal)
    achieved = (len(times) - 1) / (times[-1] - times[0])
    refused = sum(1 for j in fake.journal if j.status == 429)
    print(f"\n{len(times)} requests from 4 processes on one token: {achieved:.2f} req/s = "
          f"{achieved / RATE:.1%} of the allowed {RATE}/s; 429s: {refused}; "
          f"most in any 1 s window: {max_in_any_second(j.at for j in fake.journal)}")


if __name__ == "__main__":
    main()
