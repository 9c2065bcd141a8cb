"""Many systems: what one `pkrelay run` costs as the number of `auto` systems grows.

For each N given (default 10 200 1000), one `pkrelay run` (embedded Redis, SQLite,
one worker) with N systems in `auto` mode, each with its own API token, against the
fake PluralKit API (real per-token rate limits) and a local webhook sink. Measures:

- start-up: from the command to `/readyz`, and to every system's first poll (waited
  for at most BENCH_FIRST_S, 120 s);
- idle, over BENCH_IDLE_S (20 s), BENCH_WARM_S (5 s) after that: the worker's RSS, its CPU
  (share of one core), Redis commands/s (`INFO stats` delta) and GETs/s at the fake;
- dispatch to sink: 200 `UPDATE_MEMBER` dispatches at 20/s over random systems,
  p50/p95 from the POST to the sink receiving it (waits at most BENCH_WAIT_S, 180 s);
- `/api/systems`: the median of 5 calls;
- poll ticks killed at their timeout (from the worker's log).

Prints one table, with ratios against the first N of the same run.

    python -m tests.bench.bench_systems 10 1000
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from redis import Redis

from pkrelay.redis_server import free_port
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import HEADERS, body, new_token
from tests.servers import pkrelay_run
from tests.sink_server import SinkServer

WARM_S = float(os.environ.get("BENCH_WARM_S", "5"))
FIRST_S = float(os.environ.get("BENCH_FIRST_S", "120"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "20"))
WAIT_S = float(os.environ.get("BENCH_WAIT_S", "180"))
DISPATCHES = int(os.environ.get("BENCH_DISPATCHES", "200"))
RATE = 20.0
ADMIN = "admin-bench-0123456789abcdef"


@dataclass
class Row:
    n: int
    startup_s: float
    first_poll_s: float
    first_polled: int
    rss_mb: float
    idle_cpu: float
    redis_cmds: float
    gets: float
    delivered: int
    p50_ms: float
    p95_ms: float
    api_systems_ms: float
    tick_timeouts: int


def worker_of(root: psutil.Process) -> psutil.Process:
    for proc in root.children(recursive=True):
        if "worker" in proc.cmdline():
            return proc
    raise RuntimeError("no worker process under pkrelay run")


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def redis_commands(redis: Redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])


def measure(n: int, root: Path) -> Row:
    workdir = root / f"n{n}"
    fake = FakePluralKit()
    fake.start()
    sink = SinkServer()
    sink.start()
    systems = []
    for i in range(n):
        system = fake.add_system(f"System {i}")
        members = [fake.add_member(system, f"M{j}") for j in range(3)]
        systems.append((f"s{i}", system, new_token(), members))
    port = free_port()
    cfg = write_config(workdir / "pkrelay.toml", {
        "systems": [{"name": name, "system_id": s.uuid, "api_token": s.token, "signing_token": token,
                     "mode": "auto"} for name, s, token, _ in systems],
        "server": {"port": port, "admin_token": ADMIN}, "sinks": [{"type": "webhook", "url": sink.url}],
        "pluralkit": {"api_base_url": fake.base_url}})
    log_path = workdir / "run.log"
    arrivals: dict[str, float] = {}
    read = 0
    lock = threading.Lock()

    def seen() -> dict[str, float]:
        nonlocal read
        with lock:
            for r in sink.received[read:]:
                envelope = json.loads(r.body)
                if envelope["source"] == "dispatch":
                    arrivals.setdefault(str((envelope["data"] or {}).get("name")), r.at)
                read += 1
        return arrivals

    started = time.perf_counter()
    with log_path.open("wb") as log, pkrelay_run(cfg, port, output=log.fileno()) as proc:
        startup = time.perf_counter() - started
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        worker = worker_of(psutil.Process(proc.pid))
        redis = Redis.from_url((workdir / "data" / "redis" / "url").read_text().strip())
        last_keys = [f"pkrelay:poll:last:{name}" for name, *_ in systems]
        while (polled := int(redis.exists(*last_keys))) < n and time.perf_counter() - started < FIRST_S:
            time.sleep(0.5)
        first_poll = time.perf_counter() - started
        time.sleep(WARM_S)
        cpu0, cmds0, gets0, t0 = cpu_s(worker), redis_commands(redis), len(fake.journal), time.perf_counter()
        time.sleep(IDLE_S)
        cpu1, cmds1, gets1, t1 = cpu_s(worker), redis_commands(redis), len(fake.journal), time.perf_counter()
        rss = worker.memory_info().rss / 2**20
        idle = t1 - t0

        sent: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(DISPATCHES):
            delay = start + i / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            name, system, token, members = random.choice(systems)
            member = random.choice(members)
            marker = f"d{i}-{name}"
            with fake.lock:
                member["name"] = marker
            sent[marker] = time.perf_counter()
            answer = client.post("/dispatch", headers=HEADERS,
                                 content=body("UPDATE_MEMBER", token, system.uuid, member["uuid"], {"name": marker}))
            assert answer.status_code == 200, answer.text
        deadline = time.perf_counter() + WAIT_S
        while len(set(sent) & set(seen())) < len(sent) and time.perf_counter() < deadline:
            time.sleep(0.1)
        latencies = [(arrivals[m] - t) * 1000 for m, t in sent.items() if m in arrivals]

        took = []
        for _ in range(5):
            t = time.perf_counter()
            answer = client.get("/api/systems", headers={"Authorization": f"Bearer {ADMIN}"})
            took.append((time.perf_counter() - t) * 1000)
            assert answer.status_code == 200 and len(answer.json()) == n, answer.text[:200]
        client.close()
        redis.close()
    sink.stop()
    fake.stop()
    timeouts = sum(1 for line in log_path.read_text(errors="replace").splitlines()
                   if "poll_tick" in line and "Timeout" in line)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return Row(n, startup, first_poll, polled, rss, (cpu1 - cpu0) / idle, (cmds1 - cmds0) / idle,
               (gets1 - gets0) / idle, len(latencies), q[49], q[94], statistics.median(took), timeouts)


def first(r: Row) -> str:
    if r.first_polled == r.n:
        return f"{r.first_poll_s:.0f} s"
    return f"{r.first_polled} of {r.n} after {r.first_poll_s:.0f} s"


def table(rows: list[Row]) -> str:
    base = rows[0]

    def ratio(value: float, first: float) -> str:
        return f" ({value / first:.1f}x)" if first else ""

    lines = ["| N | start-up: ready / all polled once | worker RSS | idle CPU (one core) | Redis cmds/s idle | "
             "GET/s idle | delivered | dispatch to sink p50 / p95 | `/api/systems` | poll ticks timed out |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.n} | {r.startup_s:.1f} s / {first(r)} | {r.rss_mb:.0f} MB{ratio(r.rss_mb, base.rss_mb)} | "
            f"{r.idle_cpu:.0%}{ratio(r.idle_cpu, base.idle_cpu)} | "
            f"{r.redis_cmds:.0f}{ratio(r.redis_cmds, base.redis_cmds)} | "
            f"{r.gets:.1f} | {r.delivered}/{DISPATCHES} | {r.p50_ms:.0f} / {r.p95_ms:.0f} ms"
            f"{ratio(r.p95_ms, base.p95_ms)} | "
            f"{r.api_systems_ms:.0f} ms{ratio(r.api_systems_ms, base.api_systems_ms)} | "
            f"{r.tick_timeouts} |")
    if len(rows) > 1:
        last = rows[-1]
        per = (last.rss_mb - base.rss_mb) * 1024 / max(last.n - base.n, 1)
        lines.append(f"\nworker RSS per system above N={base.n}: {per:.0f} KB")
    return "\n".join(lines)


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [10, 200, 1000]
    root = Path(tempfile.mkdtemp(prefix="pkrelay-bench-"))
    rows = []
    try:
        for n in counts:
            rows.append(measure(n, root))
            print(f"N={n} done", flush=True)
            print(table(rows), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, idle window {IDLE_S:g} s, {WARM_S:g} s after the "
          f"first poll of every system (or {FIRST_S:g} s), "
          f"{DISPATCHES} dispatches at {RATE:g}/s\n")
    print(table(rows))


if __name__ == "__main__":
    main()
