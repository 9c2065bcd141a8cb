"""The same log on PostgreSQL (`database.url`), through a throwaway cluster."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import AsyncTestClient

from pkrelay.redis_server import EmbeddedRedis
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import FakeDispatcher, sample_events


async def test_events_are_logged_once_in_postgresql(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], pg_url: str, fake_pk: FakePluralKit
) -> None:
    deployment = await deploy(tmp_path, redis_server, fake_pk, [system_creds], database={"url": pg_url})
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
