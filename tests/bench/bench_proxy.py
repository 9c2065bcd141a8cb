"""What honouring HTTP(S)_PROXY / NO_PROXY costs a worker per sink POST, no proxy in effect.

A local keep-alive HTTP server (in a process of its own) answers 204; this process POSTs
to it one request at a time and reports its own CPU per POST for:
- direct: the session as before (trust_env off, no proxy looked up);
- routed: workers/proxy.py (environment read once, each URL's route cached), as the
  webhook sender does now;
- trust_env: aiohttp's own (the environment and ~/.netrc read in threads, per request).
Interleaved rounds, medians.

    python -m tests.bench.bench_proxy
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time

import aiohttp

from pkrelay.redis_server import free_port
from workers.proxy import Proxies

POSTS = 1000
ROUNDS = 5
ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


def _serve(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


async def _round(url: str, mode: str) -> float:
    """CPU seconds per POST."""
    proxies = Proxies()
    async with aiohttp.ClientSession(trust_env=mode == "trust_env") as http:
        for _ in range(20):  # warm the connection
            async with http.post(url, data=b"{}") as r:
                await r.read()
        started = time.process_time()
        for _ in range(POSTS):
            if mode == "routed":
                route = proxies.route(url)
                async with http.post(url, data=b"{}", proxy=route.proxy, proxy_headers=route.proxy_headers,
                                     headers={"content-type": "application/json"} | route.headers) as r:
                    await r.read()
            else:
                async with http.post(url, data=b"{}", headers={"content-type": "application/json"}) as r:
                    await r.read()
        return (time.process_time() - started) / POSTS


def main() -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        os.environ.pop(name, None)
    port = free_port()
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    time.sleep(0.5)
    url = f"http://127.0.0.1:{port}/hook"
    results: dict[str, list[float]] = {"direct": [], "routed": [], "trust_env": []}
    try:
        for _ in range(ROUNDS):
            for mode, times in results.items():
                times.append(asyncio.run(_round(url, mode)))
    finally:
        server.terminate()
    base = statistics.median(results["direct"])
    for mode, times in results.items():
        median = statistics.median(times)
        print(f"{mode:10} {median * 1e6:7.1f} µs CPU per POST ({(median - base) * 1e6:+.1f} µs)")


if __name__ == "__main__":
    main()
