"""What connected /api/stream clients cost the relay: a burst's delivery time and the
receiver's CPU, with 0, 50 and 200 streams connected (server.max_streams is 200).

Runs `pkrelay run` as a user would (embedded Redis, SQLite, one worker) with one
webhook sink served by this process. For each count of streams it connects them (each
reads every event, as an integration would), posts a burst of dispatches
(CREATE_MESSAGE: no API call, the pipeline's own cost) and waits for every event at the
sink and on every stream.

    python -m tests.bench.bench_streams            # BENCH_BURST=500 BENCH_STREAMS=0,50,200

Prints one line per count: the time from the first POST to the last delivery at the
sink, its ratio to the 0-stream run, when the streams had every event, and the CPU the
receiver (`pkrelay serve`) and the worker spent per event.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path

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

BURST = int(os.environ.get("BENCH_BURST", "500"))
COUNTS = [int(n) for n in os.environ.get("BENCH_STREAMS", "0,50,200").split(",")]
ADMIN = "bench-admin-token-0123456789abcdef"


class Streams:
    """`count` SSE connections read on their own event loop in a thread; each counts the
    events it gets and notes when the last one of the burst came."""

    def __init__(self, url: str, count: int) -> None:
        self.url, self.count = url, count
        self.got = [0] * count
        self.last = [0.0] * count
        self.connected = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.tasks: list[asyncio.Future[None]] = []

    async def _read(self, session: aiohttp.ClientSession, i: int) -> None:
        async with session.get(self.url, headers={"Authorization": f"Bearer {ADMIN}"},
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
            assert response.status == 200, response.status
            self.connected += 1
            async for line in response.content:
                if line.startswith(b"id:"):
                    self.got[i] += 1
                    self.last[i] = time.perf_counter()

    async def _open(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.tasks = [asyncio.ensure_future(self._read(self.session, i)) for i in range(self.count)]

    async def _close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()

    def __enter__(self) -> Streams:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()
        deadline = time.monotonic() + 30
        while self.connected < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.connected} of {self.count} streams connected")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


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
    lines: list[str] = []
    baseline = 0.0
    with pkrelay_run(cfg, port) as proc, httpx.Client(base_url=base) as client:
        root = psutil.Process(proc.pid)
        for run, count in enumerate(COUNTS):
            names = {f"r{run}-{i}" for i in range(BURST)}
            bodies = [body("CREATE_MESSAGE", token, system.uuid, None, {**MESSAGE, "id": name}) for name in names]
            with Streams(base + "/api/stream", count) as streams:
                time.sleep(1)  # the streams settle into their idle polling
                before, seen_before = sample(root), len(sink.received)
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
                streamed = max(streams.last, default=start)
                complete = sum(g == BURST for g in streams.got)
            took = delivered - start
            baseline = baseline or took
            cpu = {role: sum(v[1] - before.get(k, (0, 0))[1] for k, v in after.items() if k.startswith(role + ":"))
                   for role in ("serve", "worker")}
            line = (f"{count:3d} streams: burst of {BURST} posted in {posted - start:.2f} s, delivered to the sink "
                    f"after {took:.2f} s ({took / baseline:.2f}x the 0-stream run)")
            if count:
                line += f", on all {complete}/{count} streams after {streamed - start:.2f} s"
            line += (f"; CPU per event: receiver {cpu['serve'] / BURST * 1000:.2f} ms, "
                     f"worker {cpu['worker'] / BURST * 1000:.2f} ms")
            print(line, flush=True)
            lines.append(line)
    sink.stop()
    fake.stop()


if __name__ == "__main__":
    main()
