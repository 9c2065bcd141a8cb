"""What connected /api/stream clients cost the relay: a burst's delivery time and the
receiver's CPU, with 0, 50 and 200 streams connected (server.max_streams is 200).

Runs `pkrelay run` as a user would (embedded Redis, SQLite, one worker) with one
webhook sink served by this process. For each count of streams it connects them (each
reads every event, as an integration would), posts a burst of dispatches
(CREATE_MESSAGE: no API call, the pipeline's own cost) and waits for every event at the
sink and on every stream.

    python -m tests.bench.bench_streams   # BENCH_BURST=500 BENCH_STREAMS=0,50,200 BENCH_ROUNDS=3

Prints one line per burst: the time from the first POST to the last delivery at the
sink, when the streams had every event, and the CPU the
receiver (`pkrelay serve`) and the worker spent per event; then the median per count
and its ratio to the first count's (0 streams).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

from pkrelay.redis_server import free_port
from tests.bench.bench_throughput import MESSAGE, sample
from tests.deployment import webhook_sink, write_config
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import HEADERS, body, new_token
from tests.servers import pkrelay_run
from tests.sink_server import SinkServer
from tests.waiting import wait_until

BURST = int(os.environ.get("BENCH_BURST", "500"))
COUNTS = [int(n) for n in os.environ.get("BENCH_STREAMS", "0,50,200").split(",")]
# The counts run in turn this many times (0, 50, 200, 0, 50, 200, ...): one burst on a
# shared machine is noisy, the median of interleaved rounds much less so.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ADMIN = "bench-admin-token-0123456789abcdef"


class Streams:
    """`count` SSE connections read in a process of their own (so the readers never hold
    up the POSTs or the sink, which share this process's interpreter lock); each counts
    the events it gets and notes (perf_counter, the same clock system-wide) when the
    last one came."""

    def __init__(self, url: str, count: int) -> None:
        self.url, self.count = url, count
        self._got = multiprocessing.Array("i", max(count, 1))
        self._last = multiprocessing.Array("d", max(count, 1))
        self._connected = multiprocessing.Value("i", 0)
        self._stop = multiprocessing.Event()
        self._process = multiprocessing.Process(target=_read_all, daemon=True, args=(
            url, count, self._got, self._last, self._connected, self._stop))

    @property
    def got(self) -> list[int]:
        return list(self._got[:self.count])

    @property
    def last(self) -> list[float]:
        return list(self._last[:self.count])

    def __enter__(self) -> Streams:
        if self.count:
            self._process.start()
            wait_until(lambda: self._connected.value >= self.count, 30, f"{self.count} streams connected",
                       seen=lambda: self._connected.value, interval=0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.count:
            self._stop.set()
            self._process.join(10)


def _read_all(url: str, count: int, got: Any, last: Any, connected: Any, stop: Any) -> None:
    async def read(session: aiohttp.ClientSession, i: int) -> None:
        async with session.get(url, headers={"Authorization": f"Bearer {ADMIN}"},
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
            assert response.status == 200, response.status
            with connected.get_lock():
                connected.value += 1
            async for line in response.content:
                if line.startswith(b"id:"):
                    got[i] += 1
                    last[i] = time.perf_counter()

    async def main() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [asyncio.ensure_future(read(session, i)) for i in range(count)]
            await asyncio.to_thread(stop.wait)  # a process-wide event: waited on in a thread
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pkrelay-bench-"))
    sink = SinkServer()
    sink.start()
    fake = FakePluralKit()
    fake.start()
    system = fake.add_system()
    token, port = new_token(), free_port()
    cfg = write_config(workdir / "pkrelay.toml", {
        "systems": [{"name": "home", "system_id": system.uuid, "signing_token": token, "api_token": system.token,
                     "mode": "webhook"}],
        "server": {"port": port, "admin_token": ADMIN}, "pluralkit": {"api_base_url": fake.base_url},
        "sinks": [webhook_sink(sink.url)]})
    base = f"http://127.0.0.1:{port}"
    took_by_count: dict[int, list[float]] = {count: [] for count in COUNTS}
    with pkrelay_run(cfg, port) as proc, httpx.Client(base_url=base) as client:
        root = psutil.Process(proc.pid)
        for run, count in enumerate(COUNTS * ROUNDS):
            names = {f"r{run}-{i}" for i in range(BURST)}
            bodies = [body("CREATE_MESSAGE", token, system.uuid, None, {**MESSAGE, "id": name}) for name in names]
            with Streams(base + "/api/stream", count) as streams:
                time.sleep(1)  # the streams settle into their idle polling
                before, seen_before = sample(root), len(sink.received)
                generator = psutil.Process().cpu_times()
                start = time.perf_counter()
                for content in bodies:
                    assert client.post("/dispatch", content=content, headers=HEADERS).status_code == 200
                posted = time.perf_counter()
                deadline = time.perf_counter() + 120
                arrived: set[str] = set()
                while len(arrived) < BURST and time.perf_counter() < deadline:
                    for r in sink.received[seen_before + len(arrived):]:
                        arrived.add(str((json.loads(r.body)["data"] or {}).get("id")))
                    time.sleep(0.01)
                delivered = max(r.at for r in sink.received[seen_before:])
                while min(streams.got, default=BURST) < BURST and time.perf_counter() < deadline:
                    time.sleep(0.05)
                after = sample(root)
                used = psutil.Process().cpu_times()
                busy = (used.user + used.system - generator.user - generator.system) / (time.perf_counter() - start)
                streamed = max(streams.last, default=start)
                complete = sum(g == BURST for g in streams.got)
            took = delivered - start
            took_by_count[count].append(took)
            cpu = {role: sum(v[1] - before.get(k, (0, 0))[1] for k, v in after.items() if k.startswith(role + ":"))
                   for role in ("serve", "worker")}
            line = (f"{count:3d} streams: burst of {BURST} posted in {posted - start:.2f} s, delivered to the sink "
                    f"after {took:.2f} s")
            if count:
                line += f", on all {complete}/{count} streams after {streamed - start:.2f} s"
            line += (f"; CPU per event: receiver {cpu['serve'] / BURST * 1000:.2f} ms, "
                     f"worker {cpu['worker'] / BURST * 1000:.2f} ms; this process (client and sink) "
                     f"{busy:.0%} of a core{' (the generator may be the limit)' if busy > 0.8 else ''}")
            print(line, flush=True)
    sink.stop()
    fake.stop()
    medians = {count: statistics.median(took) for count, took in took_by_count.items()}
    base = medians[COUNTS[0]]
    print(f"median of {ROUNDS} rounds, burst to sink: " + ", ".join(
        f"{count} streams {m:.2f} s ({m / base:.2f}x)" for count, m in medians.items()), flush=True)


if __name__ == "__main__":
    main()
