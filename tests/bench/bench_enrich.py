"""Enrichment benchmark: 300 UPDATE_MEMBER dispatches over 30 members within 2 s.

Runs `pkrelay run` (embedded Redis, SQLite, one worker) against the fake PluralKit API
and reports the API calls spent (target at most 45), 429s (target 0), and the time
from the first dispatch until all 300 are in the log, beside the time the rate limit
alone makes necessary for the calls spent.

    python -m tests.bench.bench_enrich
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from pkrelay import config, db
from pkrelay.pluralkit.ratelimit import WINDOW_MS
from pkrelay.redis_server import free_port
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import HEADERS, body, new_token
from tests.servers import pkrelay_run

MEMBERS, EVENTS, SPREAD_S = 30, 300, 2.0


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pkrelay-bench-"))
    fake = FakePluralKit()
    fake.start()
    system = fake.add_system()
    members = [fake.add_member(system, f"M{i}") for i in range(MEMBERS)]
    token, port = new_token(), free_port()
    cfg = write_config(workdir / "pkrelay.toml", {
        "systems": [{"name": "home", "system_id": system.uuid, "signing_token": token, "api_token": system.token}],
        "server": {"port": port}, "pluralkit": {"api_base_url": fake.base_url}})
    engine_url = config.load(cfg).database_url

    async def logged() -> int:
        engine = db.create_engine(engine_url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(sa.select(sa.func.count()).select_from(db.events))).scalar())
        finally:
            await engine.dispose()

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    with pkrelay_run(cfg, port):
        fake.journal.clear()
        start = time.perf_counter()
        for i in range(EVENTS):
            delay = start + i * SPREAD_S / EVENTS - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            m = members[i % MEMBERS]
            assert client.post("/dispatch", headers=HEADERS, content=body(
                "UPDATE_MEMBER", token, system.uuid, m["uuid"], {"description": f"edit {i}"})).status_code == 200
        posted = time.perf_counter() - start
        while asyncio.run(logged()) < EVENTS and time.perf_counter() - start < 120:
            time.sleep(0.1)
        done = time.perf_counter() - start
    fake.stop()
    calls = len(fake.journal)
    enrichment = sum(1 for j in fake.journal if j.path.startswith("/v2/members/"))
    refused = sum(1 for j in fake.journal if j.status == 429)
    necessary = calls * WINDOW_MS / 1000 / 10  # the limiter's pace at PluralKit's 10/s
    print(f"\n{EVENTS} UPDATE_MEMBER over {MEMBERS} members, posted in {posted:.1f} s: {calls} API calls "
          f"(target <= 45; {enrichment} member fetches, the rest reconciliation: auto mode, and new members), "
          f"{refused} 429s; all logged after {done:.1f} s "
          f"(rate limit alone needs {necessary:.1f} s; target <= {necessary + 2:.1f} s)")


if __name__ == "__main__":
    main()
