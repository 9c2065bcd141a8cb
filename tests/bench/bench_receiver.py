"""Receiver benchmark: accepted dispatches/s and latency, against a bare Litestar handler.

Both apps run under the same uvicorn command (one process, uvloop, httptools) in the
same run, the receiver also with `pkrelay serve`'s protocol (httptools plus a read
deadline), and wrk drives each with the same realistic dispatch bodies. Then an
open-loop client sends at a fixed 200 requests/s to measure p50/p99 latency.

    python -m tests.bench.bench_receiver        (needs `wrk`: apt-get install wrk)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pkrelay import queue
from pkrelay.redis_server import EmbeddedRedis, free_port
from tests.deployment import write_config
from tests.fakepk.dispatcher import HEADERS, body, new_system_id, new_token
from tests.waiting import wait_until

DURATION_S = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 32
MEMBER = "2ee0c92b-bb4f-4a2c-a9a8-3b7d8f3d5f10"


def serve(target: str, port: int, env: dict[str, str], factory: bool,
          http: str = "httptools") -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--no-access-log",
            "--log-level", "warning", "--loop", "uvloop", "--http", http]
    proc = subprocess.Popen(argv + (["--factory"] if factory else []), env=env)

    def answers() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return True
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 20, f"{target} to answer on {port}", interval=0.05)
    except AssertionError:
        proc.kill()
        raise
    return proc


def wrk(port: int, content: bytes, workdir: Path) -> tuple[float, dict[str, int]]:
    script = workdir / "post.lua"
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in HEADERS.items())
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(content.decode())}\n{headers}'
                      'done = function(summary, latency, requests)\n'
                      '  io.write(string.format("non2xx=%d\\n", summary.errors.status))\nend\n')
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION_S}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/dispatch"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = int(re.search(r"non2xx=(\d+)", out).group(1))  # type: ignore[union-attr]
    return rps, {"non_2xx": bad}


async def fixed_rate(port: int, content: bytes, rate: int, seconds: int) -> list[float]:
    """Open loop: send at `rate`/s regardless of answers; latency of each request in ms."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 limits=httpx.Limits(max_connections=64)) as client:
        async def one() -> None:
            start = time.perf_counter()
            r = await client.post("/dispatch", content=content, headers=HEADERS)
            assert r.status_code == 200, r.text
            latencies.append((time.perf_counter() - start) * 1000)

        tasks = []
        t0 = time.perf_counter()
        for i in range(rate * seconds):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1]


def main() -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="pkrelay-bench-"))
    redis = EmbeddedRedis(workdir / "redis")
    redis.start()
    token, system_id = new_token(), new_system_id()
    cfg = write_config(workdir / "pkrelay.toml", {"systems": [{"name": "home", "system_id": system_id,
                                                               "signing_token": token}], "redis": {"url": redis.url}})
    env = dict(os.environ, PKRELAY_CONFIG=str(cfg))
    content = body("UPDATE_MEMBER", token, system_id, MEMBER, {"name": "Alex", "color": "ff00aa",
                                                               "pronouns": "they/them"})
    results = {}
    try:
        for name, target, factory, http in [
            ("bare litestar", "tests.bench.bare_app:app", False, "httptools"),
            ("pkrelay receiver", "tests.bench.receiver_app:app", True, "httptools"),
            ("receiver, serve's", "tests.bench.receiver_app:app", True, "tests.bench.receiver_app:protocol"),
        ]:
            port = free_port()
            proc = serve(target, port, env, factory, http)
            try:
                wrk(port, content, workdir)  # warm-up
                rps, errors = wrk(port, content, workdir)
                lat = asyncio.run(fixed_rate(port, content, 200, DURATION_S))
                results[name] = (rps, errors, lat)
            finally:
                proc.terminate()
                proc.wait()

        async def depth() -> int:
            r = queue.connect(redis.url)
            try:
                return await queue.depth(r)
            finally:
                await r.aclose()

        queued = asyncio.run(depth())
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    bare_rps = results["bare litestar"][0]
    print(f"\n{'server':<18} {'req/s':>9} {'ratio':>6} {'non-2xx':>8} {'p50 ms@200/s':>13} {'p99 ms@200/s':>13}")
    for name, (rps, errors, lat) in results.items():
        print(f"{name:<18} {rps:>9.0f} {rps / bare_rps:>6.2f} {errors['non_2xx']:>8} "
              f"{pct(lat, 50):>13.2f} {pct(lat, 99):>13.2f}")
    print(f"\njobs queued in Redis by the receiver runs: {queued}")


if __name__ == "__main__":
    main()
