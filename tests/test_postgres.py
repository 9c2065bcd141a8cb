"""The same log on PostgreSQL (`database.url`), through a throwaway cluster."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import AsyncTestClient

from pkrelay.redis_server import EmbeddedRedis
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import FakeDispatcher, sample_events
from tests.harness import Deployment, write_config


async def test_events_are_logged_once_in_postgresql(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], pg_url: str, fake_pk: FakePluralKit
) -> None:
    cfg = write_config(tmp_path / "pkrelay.toml", tmp_path / "data", [system_creds], database_url=pg_url,
                       api_base_url=fake_pk.base_url)
    deployment = Deployment(cfg, redis_server.url)
    await deployment.migrate()
    await deployment.migrate()  # idempotent, as on every start
    sent = []
    async with AsyncTestClient(app=deployment.app()) as client:
        dispatcher = FakeDispatcher(client, "/dispatch")
        for event_type, content in sample_events(system_creds["signing_token"], system_creds["system_id"]):
            if (await dispatcher.send(content)).status_code == 200 and event_type != "PING":
                sent.append(event_type)
    await deployment.work()
    rows = await deployment.logged()
    assert [r.type for r in rows] == sent
    assert all(r.received_at.tzinfo is not None for r in rows)
