"""public_only sinks: nothing the system marked private leaves pkrelay for them."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

from arq import create_pool
from arq.connections import RedisSettings
from litestar.testing import AsyncTestClient

from pkrelay import db, privacy
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store import deliveries
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import add_to_config, deploy
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.harness import Deployment
from tests.sink_server import SinkServer

MEMBER = {
    "id": "abcde", "uuid": MEMBER_ID, "system": "exmpl", "name": "Alex", "display_name": "Al",
    "color": "ff00aa", "birthday": "1990-03-15", "pronouns": "they/them", "avatar_url": "https://a/x.png",
    "webhook_avatar_url": "https://a/y.png", "banner": "https://a/b.png", "description": "secret diary",
    "created": "2026-01-01T00:00:00Z", "proxy_tags": [{"prefix": "a:", "suffix": None}], "keep_proxy": False,
    "tts": False, "autoproxy_enabled": True, "message_count": 42, "last_message_timestamp": "2026-11-22T18:00:00Z",
    "privacy": {"visibility": "public", "name_privacy": "public", "description_privacy": "private",
                "birthday_privacy": "private", "pronoun_privacy": "public", "avatar_privacy": "private",
                "banner_privacy": "private", "metadata_privacy": "private", "proxy_privacy": "private"},
}
PUBLIC_KEYS = {"id", "uuid", "system", "name", "display_name", "color", "pronouns"}
SYSTEM = {"id": "exmpl", "uuid": "5e1f", "name": "Example", "privacy": {"front_privacy": "public"}}


def _envelope(event_type: str, entity: object, data: object, previous: object = None) -> dict:
    return {"id": "evt_1", "type": event_type, "source": "dispatch", "system_id": "5e1f", "entity_id": MEMBER_ID,
            "received_at": "2026-11-22T18:00:00Z", "data": data, "entity": entity, "previous": previous}


def test_a_member_with_mixed_privacy_keeps_only_its_public_fields() -> None:
    out = privacy.strip(_envelope("UPDATE_MEMBER", MEMBER, {"description": "new diary", "name": "Alex"},
                                  previous=MEMBER), SYSTEM)
    assert out is not None
    assert set(out["entity"]) == PUBLIC_KEYS
    assert set(out["previous"]) == PUBLIC_KEYS
    assert out["data"] == {"name": "Alex"}  # the private description change is gone
    assert "secret diary" not in json.dumps(out) and "new diary" not in json.dumps(out)


def test_hidden_or_unknown_privacy_is_not_shown() -> None:
    hidden = copy.deepcopy(MEMBER)
    hidden["privacy"]["visibility"] = "private"
    assert privacy.strip(_envelope("UPDATE_MEMBER", hidden, {"name": "x"}), SYSTEM) is None
    assert privacy.strip(_envelope("UPDATE_MEMBER", None, {"name": "x"}), SYSTEM) is None  # not known
    assert privacy.strip(_envelope("UPDATE_SETTINGS", None, {"timezone": "UTC"}), SYSTEM) is None
    assert privacy.strip(_envelope("LINK_ACCOUNT", None, None), SYSTEM) is None


def test_fronters_follow_front_privacy_and_member_visibility() -> None:
    hidden = copy.deepcopy(MEMBER)
    hidden["privacy"]["visibility"] = "private"
    hidden["uuid"] = "hidden-uuid"
    switch = {"id": "sw", "timestamp": "2026-11-22T18:00:00Z", "members": [MEMBER, hidden]}
    data = {"id": "sw", "timestamp": "2026-11-22T18:00:00Z", "members": ["hidden-uuid", MEMBER_ID]}
    out = privacy.strip(_envelope("CREATE_SWITCH", switch, data), SYSTEM)
    assert out is not None
    assert [m["uuid"] for m in out["entity"]["members"]] == [MEMBER_ID]
    assert out["data"]["members"] == [MEMBER_ID]
    private_front = {**SYSTEM, "privacy": {"front_privacy": "private"}}
    out = privacy.strip(_envelope("CREATE_SWITCH", switch, data), private_front)
    assert out is not None and out["entity"]["members"] == [] and out["data"]["members"] == []


def test_a_message_loses_its_sender_and_private_member_fields() -> None:
    message = {"timestamp": "2026-11-22T18:00:00Z", "id": "1", "original": "0", "sender": "466378653216014359",
               "channel": "2", "guild": "3", "system": SYSTEM, "member": MEMBER}
    out = privacy.strip(_envelope("CREATE_MESSAGE", None, message), SYSTEM)
    assert out is not None
    assert "sender" not in out["data"] and set(out["data"]["member"]) == PUBLIC_KEYS


async def test_a_public_only_sink_receives_the_stripped_envelope_and_a_private_sink_all(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit
) -> None:
    public, private = SinkServer(), SinkServer()
    public.start()
    private.start()
    try:
        dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[
            {"type": "webhook", "url": public.url, "public_only": True}, {"type": "webhook", "url": private.url}])
        # An event as enrichment logs it: with the full member in `entity`.
        engine = db.create_engine(dep.live().current.database_url)
        async with engine.begin() as conn:
            await conn.execute(db.events.insert().values(
                id="evt_01TEST", type="UPDATE_MEMBER", source="dispatch", system="home",
                system_id=system_creds["system_id"], entity_id=MEMBER_ID, received_at=datetime.now(UTC),
                data={"description": "new diary"}, entity=MEMBER, previous=None))
            await deliveries.plan(conn, "evt_01TEST", "UPDATE_MEMBER", "home", dep.live().current.sinks)
        redis = await create_pool(RedisSettings.from_dsn(dep.redis_url))
        async with engine.connect() as conn:
            assert await deliveries.enqueue_pending(redis, conn, ["evt_01TEST"]) == 2
        await redis.aclose()
        await engine.dispose()
        await dep.work(RetryPolicy(base=0.05, cap=0.1))
        [got_public], [got_private] = public.received, private.received
        assert set(json.loads(got_public.body)["entity"]) == PUBLIC_KEYS
        assert json.loads(got_public.body)["data"] == {}
        assert b"secret diary" not in got_public.body and b"new diary" not in got_public.body
        assert json.loads(got_private.body)["entity"] == MEMBER
    finally:
        public.stop()
        private.stop()


async def test_a_public_widget_sees_who_fronts_when_the_front_is_public(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
) -> None:
    public = SinkServer()
    public.start()
    try:
        add_to_config(deployment.config_file, {"sinks": [
            {"type": "webhook", "url": public.url, "public_only": True, "events": ["CREATE_SWITCH"]}]})
        shown = fake_pk.add_member(fake_system, "Shown")
        hidden = fake_pk.add_member(fake_system, "Hidden")
        hidden["privacy"]["visibility"] = "private"
        switch = fake_pk.add_switch(fake_system, [shown["uuid"], hidden["uuid"]])
        async with AsyncTestClient(app=deployment.app()) as client:
            dispatcher = FakeDispatcher(client, "/dispatch")
            for event_type, data in (("UPDATE_SYSTEM", {"name": "Example"}),
                                     ("CREATE_SWITCH", {"id": switch["id"], "timestamp": switch["timestamp"],
                                                        "members": [shown["uuid"], hidden["uuid"]]})):
                assert (await dispatcher.send(body(event_type, system_creds["signing_token"],
                                                   system_creds["system_id"], switch["id"], data))).status_code == 200
                await deployment.work()
        [got] = public.received
        envelope = json.loads(got.body)
        assert [m["name"] for m in envelope["entity"]["members"]] == ["Shown"]
        assert envelope["data"]["members"] == [shown["uuid"]]
    finally:
        public.stop()
