"""A system added to the config file while pkrelay runs: its first event is whole.

The receiver and each worker re-read the file on their own (about once a second), so
the receiver may accept a new system's first dispatch before a worker knows the
system. That worker must reload (or wait for the file) rather than log the event as
if the system were gone, without its entity.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.worker import Worker
from litestar.testing import AsyncTestClient

from pkrelay.config import LiveSettings, Settings
from pkrelay.redis_server import EmbeddedRedis
from tests.deployment import add_to_config, deploy, webhook_sink
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import FakeDispatcher, body, new_token
from tests.sink_server import SinkServer
from workers.settings import worker_settings


@pytest.fixture
def sink() -> Iterator[SinkServer]:
    server = SinkServer()
    server.start()
    yield server
    server.stop()


async def test_a_new_systems_first_event_waits_for_the_workers_reload(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, sink: SinkServer,
    system_creds: dict[str, str]
) -> None:
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[webhook_sink(sink.url)])
    worker_live = dep.live()  # the worker's settings, read before the system is added

    async def lagging(on_change: Any, interval: float = 1.0) -> None:
        await asyncio.sleep(3600)  # its watcher has not ticked yet

    worker_live.watch = lagging  # type: ignore[method-assign]
    new = fake_pk.add_system("Newcomer")
    member = fake_pk.add_member(new, "Robin")
    token = new_token()
    add_to_config(dep.config_file, {"systems": [
        {"name": "newcomer", "system_id": new.uuid, "api_token": new.token, "signing_token": token}]})

    async with AsyncTestClient(app=dep.app()) as client:  # the receiver has reloaded
        content = body("UPDATE_MEMBER", token, new.uuid, member["uuid"], {"name": "Robin"})
        assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200
    await _burst(worker_live, dep.redis_url)

    [row] = await dep.logged()
    assert row.entity is not None and row.entity["name"] == "Robin"
    [delivered] = [json.loads(r.body) for r in sink.received]
    assert delivered["entity_id"] == member["uuid"] and delivered["entity"]["name"] == "Robin"
    assert worker_live.current.system("newcomer") is not None


async def _burst(live: LiveSettings, redis_url: str) -> Settings:
    settings = worker_settings(live, redis_url)
    settings["cron_jobs"] = []
    worker = Worker(**settings, burst=True)
    try:
        await worker.main()
    finally:
        await worker.close()
    return live.current
