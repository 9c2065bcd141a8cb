"""End-to-end throughput: dispatch POSTs in, webhook sink POSTs out, events per second.

Two kinds of event: `CREATE_MESSAGE` (no API call: the pipeline's own cost) and
`UPDATE_MEMBER` spread over many systems, each with its own token and so its own API
budget. Two deployments: `pkrelay run` (embedded Redis, SQLite, one worker), and the
production shape on PostgreSQL (an external Redis-compatible server, `pkrelay serve`,
1, 2 and 4 `pkrelay worker` processes). Each run posts a burst as fast as 16
concurrent clients can, then waits for every event at the sink; it samples queue
depth and the RSS of every pkrelay process while it goes.

    python -m tests.bench.bench_throughput            # BENCH_EVENTS=3000 BENCH_SYSTEMS=20
    BENCH_ONLY=sqlite BENCH_KINDS=CREATE_MESSAGE python -m tests.bench.bench_throughput
    BENCH_ONLY=sqlite BENCH_SYSTEMS=1 python -m tests.bench.bench_throughput  # one busy system's ceiling

Prints one line per run: events/s from the first POST to the last delivery, POST rate,
the rate the backlog drains at once every POST is answered (the workers' pace, with the
receiver idle), the queue depth over the run, RSS per process at start and end, and CPU per process
(as a share of one core over the run, the load generator's own included).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
from redis import Redis

from pkrelay.redis_server import EmbeddedRedis, free_port
from tests import postgres
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import HEADERS, body, new_token
from tests.servers import pkrelay_process, pkrelay_run, ready
from tests.sink_server import SinkServer
from tests.waiting import until, wait_until

EVENTS = int(os.environ.get("BENCH_EVENTS", "3000"))
SYSTEMS = int(os.environ.get("BENCH_SYSTEMS", "20"))
ONLY = os.environ.get("BENCH_ONLY", "")  # "sqlite": skip the PostgreSQL runs
KINDS = tuple(os.environ.get("BENCH_KINDS", "CREATE_MESSAGE,UPDATE_MEMBER").split(","))
CONCURRENCY = 16
MESSAGE = {"timestamp": "2026-11-22T18:00:00Z", "id": "1", "original": "0", "sender": "2", "channel": "3",
           "guild": "4", "system": None, "member": None}


@dataclass
class World:
    fake: FakePluralKit
    sink: SinkServer
    systems: list[tuple[FakeSystem, str, str]] = field(default_factory=list)  # (system, signing token, member)

    def config(self, workdir: Path, port: int, database_url: str = "", redis_url: str = "") -> Path:
        creds = [{"name": f"s{i}", "system_id": s.uuid, "signing_token": token, "api_token": s.token,
                  "mode": "webhook"} for i, (s, token, _) in enumerate(self.systems)]
        return write_config(workdir / "pkrelay.toml", {
            "systems": creds, "server": {"port": port}, "sinks": [{"type": "webhook", "url": self.sink.url}],
            "redis": {"url": redis_url}, "database": {"url": database_url},
            "pluralkit": {"api_base_url": self.fake.base_url}})


def bodies(world: World, kind: str) -> list[bytes]:
    out = []
    for i in range(EVENTS):
        system, token, member = world.systems[i % len(world.systems)]
        if kind == "CREATE_MESSAGE":
            out.append(body("CREATE_MESSAGE", token, system.uuid, None, {**MESSAGE, "id": str(i)}))
        else:
            out.append(body("UPDATE_MEMBER", token, system.uuid, member, {"description": f"edit {i}"}))
    return out


def due(queue: Redis) -> int:
    """Jobs waiting to run now (arq's queue also holds cron jobs scheduled ahead)."""
    return int(queue.zcount("arq:queue", 0, int(time.time() * 1000)))


def sample(root: psutil.Process) -> dict[str, tuple[float, float]]:
    """(RSS in MB, CPU seconds) of a process tree by role (serve, worker, run, valkey-server...)."""
    out: dict[str, tuple[float, float]] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmd = proc.cmdline()
            role = next((a for a in cmd if a in ("run", "serve", "worker")), os.path.basename(cmd[0]))
            cpu = proc.cpu_times()
            out[f"{role}:{proc.pid}"] = (proc.memory_info().rss / 2**20, cpu.user + cpu.system)
        except psutil.Error:
            continue
    return out


async def burst(port: int, payloads: list[bytes], sink: SinkServer, redis_url: str,
                roots: list[psutil.Process]) -> str:
    """POST every payload, wait for every delivery; one line of figures."""
    before = len(sink.received)
    queue = Redis.from_url(redis_url)
    start = {k: v for root in roots for k, v in sample(root).items()}
    me = psutil.Process()
    own_cpu = sum(me.cpu_times()[:2])
    depths: list[int] = []  # jobs due, every half second

    async def watch() -> None:
        while True:
            depths.append(due(queue))
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    # aiohttp: the load generator shares the cores with what it measures, and an httpx
    # POST costs ten times the CPU.
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=aiohttp.ClientTimeout(30)) as client:
        pending = list(payloads)

        async def post() -> None:
            while pending:
                async with client.post("/dispatch", data=pending.pop(), headers=HEADERS) as answer:
                    assert answer.status == 200, await answer.text()

        await asyncio.gather(*(post() for _ in range(CONCURRENCY)))
    posted = time.perf_counter()
    by_posted = len(sink.received) - before
    await until(lambda: len(sink.received) - before >= len(payloads), 600, f"all {len(payloads)} delivered",
                interval=0.05, seen=lambda: f"{len(sink.received) - before} delivered")
    done = max(r.at for r in sink.received[before:])
    watcher.cancel()
    end = {k: v for root in roots for k, v in sample(root).items()}
    queue.close()
    took = done - started
    rss = ", ".join(f"{k} {start.get(k, (0, 0))[0]:.0f}->{v[0]:.0f} MB" for k, v in sorted(end.items()))
    cpu = ", ".join(f"{k.split(':')[0]} {(v[1] - start.get(k, (0, 0))[1]) / took:.0%}" for k, v in sorted(end.items()))
    # Once every POST is answered the receiver idles: the backlog drains at the workers' pace.
    drain = (len(payloads) - by_posted) / max(done - posted, 1e-9)
    return (f"{len(payloads) / took:6.0f} events/s end to end "
            f"(POSTs at {len(payloads) / (posted - started):.0f}/s, backlog drained at {drain:.0f}/s), "
            f"queue depth every 0.5 s {depths}, RSS {rss}; "
            f"CPU {cpu}, this bench (clients, sink) {(sum(me.cpu_times()[:2]) - own_cpu) / took:.0%}")


@contextmanager
def production(world: World, workdir: Path, pg_url: str,
               workers: int) -> Iterator[tuple[int, str, list[psutil.Process]]]:
    """External Redis, `pkrelay migrate`, one `pkrelay serve`, `workers` x `pkrelay worker`."""
    redis = EmbeddedRedis(workdir / "redis")
    redis.start()
    port = free_port()
    cfg = world.config(workdir, port, database_url=pg_url, redis_url=redis.url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        assert pkrelay_process("migrate", cfg).wait(120) == 0
        procs.append(pkrelay_process("serve", cfg))
        procs += [pkrelay_process("worker", cfg) for _ in range(workers)]
        wait_until(lambda: ready(port), 60, "the receiver to become ready")
        time.sleep(2)  # the workers' start-up (migrations checked, pools open)
        yield port, redis.url, [psutil.Process(p.pid) for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        redis.stop()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="pkrelay-bench-"))
    sink = SinkServer()
    sink.start()
    fake = FakePluralKit(get_rate=10_000)  # a budget per token that this load never reaches
    fake.start()
    world = World(fake, sink)
    for i in range(SYSTEMS):
        system = fake.add_system(f"System {i}")
        world.systems.append((system, new_token(), fake.add_member(system, "Sam")["uuid"]))
    kinds = KINDS
    print(f"{EVENTS} events per run, {SYSTEMS} systems, {CONCURRENCY} concurrent POSTers, 2 cores")
    try:
        workdir = root / "run"
        port = free_port()
        cfg = world.config(workdir, port)
        with pkrelay_run(cfg, port) as proc:
            time.sleep(2)
            url = (workdir / "data" / "redis" / "url").read_text().strip()
            for kind in kinds:
                line = asyncio.run(burst(port, bodies(world, kind), sink, url, [psutil.Process(proc.pid)]))
                print(f"pkrelay run, SQLite, 1 worker, {kind:14}: {line}", flush=True)
        reason = "BENCH_ONLY=sqlite" if ONLY == "sqlite" else postgres.unavailable_reason()
        if reason:
            print(f"PostgreSQL runs skipped: {reason}")
            return
        with ExitStack() as stack:
            cluster = stack.enter_context(contextmanager(postgres.cluster)())
            for workers in (1, 2, 4):
                pg_url = cluster.create_database(f"bench{workers}")
                workdir = root / f"pg{workers}"
                with production(world, workdir, pg_url, workers) as (port, url, procs):
                    for kind in kinds:
                        line = asyncio.run(burst(port, bodies(world, kind), sink, url, procs))
                        print(f"PostgreSQL, serve + {workers} worker(s), {kind:14}: {line}", flush=True)
    finally:
        sink.stop()
        fake.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
