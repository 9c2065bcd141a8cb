"""Polling benchmark: a fronter change in PluralKit to the webhook sink, in `poll` mode.

Runs `pkrelay run` with one `poll` system at the default budget (1 GET/s) against the
fake PluralKit API and a local webhook sink, changes the front at irregular times, and
reports the latency from each change to the sink receiving its CREATE_SWITCH (targets:
p50 <= 2 s, p95 <= 4 s) and the GETs per second polling actually spent.

    python -m tests.bench.bench_poll
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from pkrelay.redis_server import free_port
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit
from tests.servers import pkrelay_run
from tests.sink_server import SinkServer

CHANGES = int(os.environ.get("BENCH_CHANGES", "25"))


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pkrelay-bench-"))
    fake = FakePluralKit()
    fake.start()
    system = fake.add_system()
    members = [fake.add_member(system, f"M{i}") for i in range(5)]
    sink = SinkServer()
    sink.start()
    port = free_port()
    cfg = write_config(workdir / "pkrelay.toml", {
        "systems": [{"name": "home", "system_id": system.uuid, "api_token": system.token, "mode": "poll"}],
        "pluralkit": {"api_base_url": fake.base_url}, "server": {"port": port},
        "sinks": [{"type": "webhook", "url": sink.url, "events": ["CREATE_SWITCH"]}]})
    changed: dict[str, float] = {}
    with pkrelay_run(cfg, port):
        time.sleep(5)  # the first polls record the baseline
        fake.journal.clear()
        start = time.perf_counter()
        for _ in range(CHANGES):
            time.sleep(random.uniform(1.0, 3.5))
            with fake.lock:
                switch = fake.add_switch(system, [random.choice(members)["uuid"]])
            changed[switch["id"]] = time.perf_counter()
        deadline = time.perf_counter() + 15
        while len(sink.received) < CHANGES and time.perf_counter() < deadline:
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
    sink.stop()
    fake.stop()
    latencies = []
    for r in sink.received:
        envelope = json.loads(r.body)
        if envelope["entity_id"] in changed and envelope["source"] == "poll":
            latencies.append(r.at - changed[envelope["entity_id"]])
    gets = sum(1 for j in fake.journal if j.method == "GET")
    q = statistics.quantiles(latencies, n=20)
    print(f"\n{len(latencies)}/{CHANGES} front changes delivered; "
          f"change-to-sink p50 {statistics.median(latencies):.2f} s, "
          f"p95 {q[18]:.2f} s, max {max(latencies):.2f} s; polling spent {gets / elapsed:.2f} GET/s "
          f"(budget 1.0); 429s: {sum(1 for j in fake.journal if j.status == 429)}")


if __name__ == "__main__":
    main()
