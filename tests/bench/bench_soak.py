"""Soak: `pkrelay run` at a fixed rate for minutes; memory and queue depth over time.

A mix of member edits (enrichment through the fake API) and messages over
BENCH_SYSTEMS systems, POSTed at BENCH_RATE per second for BENCH_SECONDS. Every 10 s it
prints the RSS of each process, the queue depth and the backlog (sent, not yet
delivered); at the end, whether every event reached the sink and the queue drained to
zero. With BENCH_SYSTEMS=1 it is the one-busy-system run: every event waits for that
system's lock, so the backlog shows whether one system's ceiling is above its rate.

    python -m tests.bench.bench_soak          # BENCH_RATE=20 BENCH_SECONDS=300 BENCH_SYSTEMS=5
    BENCH_SYSTEMS=1 BENCH_RATE=30 BENCH_SECONDS=600 python -m tests.bench.bench_soak
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from redis import Redis

from pkrelay.redis_server import free_port
from tests.bench.bench_throughput import MESSAGE, World, due, sample
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import HEADERS, body, new_token
from tests.servers import pkrelay_run
from tests.sink_server import SinkServer

RATE = float(os.environ.get("BENCH_RATE", "20"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "300"))
SYSTEMS = int(os.environ.get("BENCH_SYSTEMS", "5"))


def rss_mb(tree: psutil.Process) -> dict[str, float]:
    return {k: rss for k, (rss, _) in sample(tree).items()}


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="pkrelay-soak-"))
    sink = SinkServer()
    sink.start()
    fake = FakePluralKit()
    fake.start()
    world = World(fake, sink)
    for i in range(SYSTEMS):
        system = fake.add_system(f"System {i}")
        world.systems.append((system, new_token(), fake.add_member(system, "Sam")["uuid"]))
    port = free_port()
    cfg = world.config(root, port)
    try:
        with pkrelay_run(cfg, port) as proc, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            tree = psutil.Process(proc.pid)
            queue = Redis.from_url((root / "data" / "redis" / "url").read_text().strip())
            start_rss = rss_mb(tree)
            print(f"{RATE:.0f} events/s for {SECONDS} s over {SYSTEMS} systems; RSS at start: "
                  + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(start_rss.items())), flush=True)
            started, sent, deepest = time.perf_counter(), 0, 0
            next_report = started + 10
            while (now := time.perf_counter()) < started + SECONDS:
                if sent < (now - started) * RATE:
                    system, token, member = world.systems[sent % SYSTEMS]
                    content = (body("UPDATE_MEMBER", token, system.uuid, member, {"description": f"edit {sent}"})
                               if sent % 2 else body("CREATE_MESSAGE", token, system.uuid, None,
                                                     {**MESSAGE, "id": str(sent)}))
                    assert client.post("/dispatch", content=content, headers=HEADERS).status_code == 200
                    sent += 1
                    continue
                depth = due(queue)
                deepest = max(deepest, depth)
                if now >= next_report:
                    print(f"  {now - started:5.0f} s: {sent} sent, {len(sink.received)} delivered "
                          f"(backlog {sent - len(sink.received)}), queue {depth}, "
                          + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(rss_mb(tree).items())), flush=True)
                    next_report += 10
                time.sleep(0.002)
            deadline = time.perf_counter() + 120
            while (len(sink.received) < sent or due(queue)) and time.perf_counter() < deadline:
                time.sleep(0.1)
            end_rss = rss_mb(tree)
            drained_after = time.perf_counter() - started - SECONDS
            print(f"done: {len(sink.received)}/{sent} delivered, queue {due(queue)} "
                  f"{drained_after:.1f} s after the last POST, deepest {deepest}; RSS start->end: "
                  + ", ".join(f"{k} {start_rss.get(k, 0):.0f}->{v:.0f} MB" for k, v in sorted(end_rss.items())))
            queue.close()
    finally:
        sink.stop()
        fake.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
