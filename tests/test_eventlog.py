"""`pkrelay events --follow` as a user runs it: every event once, even one logged late."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from litestar.testing import AsyncTestClient

from pkrelay.redis_server import EmbeddedRedis
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import FakeDispatcher, body, new_token


def _lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def _next_id(lines: queue.Queue[str]) -> str:
    return str(json.loads(lines.get(timeout=30))["id"])


async def test_follow_prints_each_event_once_even_when_logged_out_of_id_order(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit
) -> None:
    home, other = fake_pk.add_system(), fake_pk.add_system()
    member = fake_pk.add_member(home, "Sam")
    polled = fake_pk.add_member(other, "P0")
    home_creds = {"name": "home", "system_id": home.uuid, "api_token": home.token, "mode": "webhook",
                  "signing_token": new_token()}
    other_creds = {"name": "other", "system_id": other.uuid, "api_token": other.token, "mode": "poll",
                   "signing_token": new_token()}
    dep = await deploy(tmp_path, redis_server, fake_pk, [home_creds, other_creds])
    t0 = time.time()
    await dep.poll(t0)  # baseline

    async def rename(n: int) -> None:
        polled["name"] = f"P{n}"
        assert await dep.poll(t0 + 60 * n) == 1

    await rename(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
    proc = subprocess.Popen([sys.executable, "-m", "pkrelay", "events", "--follow", "--config", str(dep.config_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        lines, pump = _lines(proc)
        [first] = [r.id for r in await dep.logged()]
        assert _next_id(lines) == first  # the log so far; following from here

        async with AsyncTestClient(app=dep.app()) as client:  # received first, so the smaller id...
            content = body("UPDATE_MEMBER", home_creds["signing_token"], home.uuid, member["uuid"], {"name": "Sal"})
            assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200
        await rename(2)
        await dep.work()  # ...but logged after the poll's event
        await rename(3)
        logged = {r.system: r.id for r in await dep.logged() if r.id != first and r.data != {"name": "P3"}}
        assert logged["home"] < logged["other"]
        printed = [_next_id(lines) for _ in range(3)]
        last = [r.id for r in await dep.logged() if r.data == {"name": "P3"}]
        assert printed == [logged["other"], logged["home"], *last]
    finally:
        proc.terminate()
        proc.wait(10)
    pump.join(10)
    assert lines.empty()  # nothing printed twice
