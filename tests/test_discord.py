"""Discord sinks against a fake Discord that answers as Discord does: 204, and 429 with
`retry_after` in its JSON body."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from pkrelay import db
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.sink_server import SinkServer
from workers.discord import message

RATE_LIMITED = (429, {"content-type": "application/json"},
                b'{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}')


@pytest.fixture
def discord() -> SinkServer:
    answers = {1: RATE_LIMITED}
    server = SinkServer(respond=lambda n: answers.get(n, 204))
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


async def test_a_switch_reaches_a_fake_discord_as_a_message_after_its_429(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, discord: SinkServer,
) -> None:
    sam = fake_pk.add_member(fake_system, "Sam", color="ff8800", avatar_url="https://cdn.example/sam.png")
    kim = fake_pk.add_member(fake_system, "Kim", display_name="Kimberly")
    switch = fake_pk.add_switch(fake_system, [sam["uuid"], kim["uuid"]])
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds],
                       sinks=[{"type": "discord", "url": discord.url, "name": "channel"}])
    async with AsyncTestClient(app=dep.app()) as client:
        for content in (body("CREATE_SWITCH", system_creds["signing_token"], system_creds["system_id"], switch["id"],
                             {"id": switch["id"], "timestamp": switch["timestamp"],
                              "members": [sam["uuid"], kim["uuid"]]}),
                        body("UPDATE_MEMBER", system_creds["signing_token"], system_creds["system_id"], MEMBER_ID,
                             {"name": "x"})):  # not a switch: not wanted by default
            assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200
    await dep.work(RetryPolicy(base=0.05, cap=5, window=3600))
    first, second = discord.received
    assert second.at - first.at >= 1.5  # Discord's retry_after, not the 25-50 ms backoff
    assert first.body == second.body and second.headers["content-type"] == "application/json"
    sent = json.loads(second.body)
    assert sent["content"] == "Sam, Kimberly are fronting now."
    [embed] = sent["embeds"]
    assert embed["color"] == 0xFF8800 and embed["thumbnail"] == {"url": "https://cdn.example/sam.png"}
    assert sent["allowed_mentions"] == {"parse": []}
    engine = db.create_engine(dep.live().current.database_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(db.deliveries.c.status, db.deliveries.c.attempts))).all()
    await engine.dispose()
    assert [tuple(r) for r in rows] == [("delivered", 2)]  # one delivery: UPDATE_MEMBER is not for it


def test_every_other_event_is_one_line_saying_what_changed() -> None:
    assert message({"type": "UPDATE_MEMBER", "system": "home", "entity": {"name": "Sam"},
                    "data": {"name": "Sam", "pronouns": "they/them"}})["content"] == \
        "home: Update member Sam (name, pronouns)"
    assert message({"type": "DELETE_SWITCH", "system": "home", "entity": None, "data": None})["content"] == \
        "home: Delete switch"
    nobody = message({"type": "CREATE_SWITCH", "system": "home", "entity": {"members": []}})
    assert nobody["content"] == "Nobody is fronting now." and "color" not in nobody["embeds"][0]
