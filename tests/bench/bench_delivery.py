"""End-to-end latency: from the dispatch POST to a webhook sink receiving the event.

Runs `pkrelay run` as a user would (embedded Redis, SQLite, one worker) against the
fake PluralKit API, with one webhook sink served by this process; sends dispatches
(member edits, so enrichment runs too) at a fixed 20/s and reports
p50/p95 of POST-to-receipt, then sends a burst and reports deliveries per second.

    python -m tests.bench.bench_delivery
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from pkrelay.redis_server import free_port
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import HEADERS, body, new_token
from tests.servers import pkrelay_run
from tests.sink_server import SinkServer

RATE = 20
SECONDS = int(os.environ.get("BENCH_SECONDS", "15"))
BURST = int(os.environ.get("BENCH_BURST", "2000"))


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pkrelay-bench-"))
    arrivals: dict[str, float] = {}
    lock = threading.Lock()

    def respond(_n: int) -> int:
        return 200

    sink = SinkServer(respond=respond)
    sink.start()
    fake = FakePluralKit()
    fake.start()
    system = fake.add_system()
    system_id, member_id = system.uuid, fake.add_member(system, "Sam")["uuid"]
    token, port = new_token(), free_port()
    cfg = write_config(workdir / "pkrelay.toml", {
        "systems": [{"name": "home", "system_id": system_id, "signing_token": token, "api_token": system.token}],
        "server": {"port": port}, "sinks": [{"type": "webhook", "url": sink.url}],
        "pluralkit": {"api_base_url": fake.base_url}})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    with pkrelay_run(cfg, port):

        read = 0

        def seen() -> dict[str, float]:
            nonlocal read
            with lock:
                for r in sink.received[read:]:
                    arrivals.setdefault(str((json.loads(r.body)["data"] or {}).get("name")), r.at)
                    read += 1
            return arrivals

        def missing(names: Iterable[str]) -> list[str]:
            arrived = seen()
            return [n for n in names if n not in arrived]

        sent: dict[str, float] = {}
        t0 = time.perf_counter()
        for i in range(RATE * SECONDS):
            delay = t0 + i / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            name = f"steady-{i}"
            sent[name] = time.perf_counter()
            r = client.post("/dispatch", content=body("UPDATE_MEMBER", token, system_id, member_id, {"name": name}),
                            headers=HEADERS)
            assert r.status_code == 200
        deadline = time.perf_counter() + 30
        while missing(sent) and time.perf_counter() < deadline:
            time.sleep(0.05)
        latencies = [(arrivals[n] - t) * 1000 for n, t in sent.items() if n in arrivals]

        burst_start = time.perf_counter()
        burst = [f"burst-{i}" for i in range(BURST)]
        for name in burst:
            client.post("/dispatch", content=body("UPDATE_MEMBER", token, system_id, member_id, {"name": name}),
                        headers=HEADERS)
        posted = time.perf_counter()
        deadline = time.perf_counter() + 300
        while missing(burst) and time.perf_counter() < deadline:
            time.sleep(0.05)
        burst_done = max(arrivals[n] for n in burst)
    sink.stop()
    fake.stop()

    q = statistics.quantiles(latencies, n=100)
    print(f"\nsteady {RATE} events/s for {SECONDS} s: {len(latencies)}/{len(sent)} delivered, "
          f"POST-to-sink p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, max {max(latencies):.1f} ms")
    print(f"burst of {BURST}: posted in {posted - burst_start:.1f} s, all delivered after "
          f"{burst_done - burst_start:.1f} s: {BURST / (burst_done - burst_start):.0f} deliveries/s "
          f"(one worker, SQLite)")


if __name__ == "__main__":
    main()
