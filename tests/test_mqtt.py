"""MQTT sinks against real broker processes (amqtt and Mosquitto), seen by a subscriber:
events, retained state from the first second, availability, discovery."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest
import sqlalchemy as sa
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker
from litestar.testing import AsyncTestClient

from pkrelay import db
from pkrelay.store.deliveries import RetryPolicy, replay
from tests.deployment import add_to_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.mqtt_broker import Broker
from tests.test_queue import _worker
from tests.waiting import until
from workers.mqtt import discovery as ha
from workers.settings import worker_settings

FAST = RetryPolicy(base=0.1, cap=0.2)


class Subscriber:
    """Collects what the broker sends on some topics (retained messages included)."""

    def __init__(self, broker: Broker, topics: list[str]) -> None:
        self.broker, self.topics = broker, topics
        self.got: dict[str, bytes] = {}
        self.seen: dict[str, list[bytes]] = {}
        self.at: dict[str, float] = {}
        self.count: Counter[str] = Counter()

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"test-{id(self)}") as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            ready.set()
            async for message in client.messages:
                topic, payload = str(message.topic), bytes(message.payload)  # type: ignore[arg-type]
                self.got[topic] = payload
                self.seen.setdefault(topic, []).append(payload)
                self.at[topic] = time.monotonic()
                self.count[topic] += 1

    async def until(self, done: Callable[[dict[str, bytes]], bool], timeout: float = 20) -> dict[str, bytes]:
        await until(lambda: done(self.got), timeout, f"the messages wanted on {self.topics}", seen=lambda: self.got)
        return self.got


@pytest.fixture
async def subscribe(mqtt_broker: Broker) -> AsyncIterator[Callable[[list[str]], Any]]:
    tasks: list[asyncio.Task[None]] = []

    async def start(topics: list[str]) -> Subscriber:
        subscriber, ready = Subscriber(mqtt_broker, topics), asyncio.Event()
        tasks.append(asyncio.create_task(subscriber.run(ready)))
        await asyncio.wait_for(ready.wait(), 10)
        return subscriber

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _with_mqtt(deployment: Deployment, broker: Broker, **more: Any) -> None:
    add_to_config(deployment.config_file, {"sinks": [{"type": "mqtt", "url": broker.url, "topic_prefix": "pkrelay",
                                                      "homeassistant_discovery": True, **more}]})


@asynccontextmanager
async def _running(deployment: Deployment) -> AsyncIterator[None]:
    """A worker that keeps running (not a burst): it holds its MQTT connections."""
    worker = Worker(**{**worker_settings(deployment.live(), deployment.redis_url, FAST), "cron_jobs": []})
    task = asyncio.create_task(worker.main())
    try:
        yield
    finally:
        await worker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _dispatch(deployment: Deployment, creds: dict[str, str], event_type: str, entity_id: str | None,
                    data: Any) -> None:
    async with AsyncTestClient(app=deployment.app()) as client:
        content = body(event_type, creds["signing_token"], creds["system_id"], entity_id, data)
        assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200


async def _switch(deployment: Deployment, creds: dict[str, str], fake_pk: FakePluralKit, system: FakeSystem,
                  members: list[dict]) -> str:
    switch = fake_pk.add_switch(system, [m["uuid"] for m in members])
    await _dispatch(deployment, creds, "CREATE_SWITCH", switch["id"],
                    {"id": switch["id"], "timestamp": switch["timestamp"], "members": [m["uuid"] for m in members]})
    return switch["id"]


def _topics(fake_system: FakeSystem) -> ha.Topics:
    return ha.Topics("pkrelay", fake_system.system["id"])


async def test_a_switch_publishes_the_event_the_front_and_discovery(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker)
    t = _topics(fake_system)
    alex = fake_pk.add_member(fake_system, "Alex", color="ff00aa", avatar_url="https://img.example/alex.png",
                              pronouns="they/them")
    sam = fake_pk.add_member(fake_system, "Sam", display_name="Sammy")
    events = await subscribe([f"{t.base}/events/#", t.switch])
    await _switch(deployment, system_creds, fake_pk, fake_system, [alex, sam])
    await deployment.work(FAST)
    got = await events.until(lambda g: t.event("CREATE_SWITCH") in g and t.switch in g)
    [row] = await deployment.logged()
    envelope = json.loads(got[t.event("CREATE_SWITCH")])
    assert envelope["id"] == row.id and [m["name"] for m in envelope["entity"]["members"]] == ["Alex", "Sam"]
    fired = json.loads(got[t.switch])
    assert fired["event_type"] == "switch" and fired["fronters"] == ["Alex", "Sammy"] and fired["previous"] == []

    state = await subscribe([f"{t.base}/#", t.discovery, t.status])  # a newcomer gets the retained state
    wanted = {t.front, t.fronters, t.attributes, t.count, t.discovery, t.status}
    retained = await state.until(lambda g: wanted <= set(g))
    assert retained[t.front] == b"Alex" and retained[t.count] == b"2"
    assert [m["name"] for m in json.loads(retained[t.fronters])] == ["Alex", "Sam"]
    attributes = json.loads(retained[t.attributes])
    assert attributes["color"] == "#ff00aa" and attributes["avatar_url"] == "https://img.example/alex.png"
    assert [(f["name"], f["display_name"], f["color"], f["pronouns"]) for f in attributes["fronters"]] == [
        ("Alex", None, "#ff00aa", "they/them"), ("Sam", "Sammy", None, None)]
    assert t.switch not in retained  # events are not retained: a restart of Home Assistant fires nothing
    config = json.loads(retained[t.discovery])
    assert config["avty_t"] == "pkrelay/status" and config["dev"]["ids"] == [f"pkrelay_{t.short_id}"]
    front = config["cmps"]["front"]
    assert front["stat_t"] == t.front and front["json_attr_t"] == t.attributes
    assert front["def_ent_id"] == f"sensor.pkrelay_{t.short_id}_front" and "obj_id" not in front
    assert retained[t.status] == b"offline"  # the burst worker stopped cleanly


async def test_state_is_retained_from_the_first_second_and_after_a_broker_restart(
    deployment: Deployment, fake_pk: FakePluralKit, fake_system: FakeSystem, mqtt_broker: Broker,
    subscribe: Callable,
) -> None:
    """No event at all: the worker publishes what PluralKit shows (fetched once, as the
    store is empty), and again when the broker comes back without its retained messages."""
    _with_mqtt(deployment, mqtt_broker)
    t = _topics(fake_system)
    kim = fake_pk.add_member(fake_system, "Kim")
    fake_pk.add_switch(fake_system, [kim["uuid"]])
    wanted = {t.front, t.discovery, t.status}
    async with _running(deployment):
        first = await subscribe([t.front, t.discovery, t.status])
        got = await first.until(lambda g: wanted <= set(g) and g[t.status] == b"online")
        assert got[t.front] == b"Kim"
        calls = len(fake_pk.journal)
        mqtt_broker.restart()  # no persistence: every retained message is gone
        second = await subscribe([t.front, t.discovery, t.status])
        got = await second.until(lambda g: wanted <= set(g) and g[t.status] == b"online")
        assert got[t.front] == b"Kim" and json.loads(got[t.discovery])["cmps"]["front"]["stat_t"] == t.front
        assert len(fake_pk.journal) == calls  # from the store this time


async def test_a_sink_added_by_a_reload_announces_at_once_and_its_first_switch_knows_the_front(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    """docs/homeassistant.md: the device shows up within a second of saving, not at the first event."""
    t = _topics(fake_system)
    kim, alex = fake_pk.add_member(fake_system, "Kim"), fake_pk.add_member(fake_system, "Alex")
    await _switch(deployment, system_creds, fake_pk, fake_system, [kim])
    await deployment.work(FAST)  # no sink yet: the front is only in the state store
    async with _running(deployment):
        seen = await subscribe([t.front, t.discovery, t.switch])
        await asyncio.sleep(0.5)
        _with_mqtt(deployment, mqtt_broker)
        saved = time.monotonic()
        await seen.until(lambda g: g.get(t.front) == b"Kim" and t.discovery in g, timeout=10)
        assert seen.at[t.discovery] - saved < 2.5  # the watcher looks every second
        await _switch(deployment, system_creds, fake_pk, fake_system, [alex])
        fired = json.loads((await seen.until(lambda g: t.switch in g))[t.switch])
        assert (fired["fronters"], fired["previous"]) == (["Alex"], ["Kim"])


async def test_replaying_a_switch_fires_no_switch_event_when_the_front_is_the_same(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    """A replay is not a switch: Home Assistant automations on `front/switch` must not fire,
    even after a fronter's record changed (a colour, an avatar) since the switch."""
    _with_mqtt(deployment, mqtt_broker)
    t = _topics(fake_system)
    alex, sam = fake_pk.add_member(fake_system, "Alex"), fake_pk.add_member(fake_system, "Sam")
    await _switch(deployment, system_creds, fake_pk, fake_system, [alex])
    switch = await _switch(deployment, system_creds, fake_pk, fake_system, [sam])
    await deployment.work(FAST)
    alex.update(color="abcdef")
    sam.update(color="123456")
    await _dispatch(deployment, system_creds, "UPDATE_MEMBER", sam["uuid"], {"color": "123456"})
    await deployment.work(FAST)
    engine = db.create_engine(deployment.live().current.database_url)
    async with engine.connect() as conn:
        [event_id] = (await conn.execute(sa.select(db.events.c.id).where(db.events.c.entity_id == switch))).scalars()
    await engine.dispose()
    watch = await subscribe([t.switch, t.event("CREATE_SWITCH")])
    engine = db.create_engine(deployment.live().current.database_url)
    redis = await create_pool(RedisSettings.from_dsn(deployment.redis_url))
    try:
        assert await replay(engine, redis, deployment.live().current.sinks, event_ids=[event_id]) == 1
        await deployment.work(FAST)
    finally:
        await redis.aclose()
        await engine.dispose()
    await watch.until(lambda g: t.event("CREATE_SWITCH") in g)  # the event itself goes out again
    await asyncio.sleep(0.5)
    assert t.switch not in watch.got


async def test_a_fronter_edit_updates_the_front_whatever_the_events_filter(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker, events=["CREATE_SWITCH"])
    t = _topics(fake_system)
    alex = fake_pk.add_member(fake_system, "Alex", color="112233")
    await _switch(deployment, system_creds, fake_pk, fake_system, [alex])
    await deployment.work(FAST)
    watch = await subscribe([t.front, t.attributes, f"{t.base}/events/#"])
    await watch.until(lambda g: g.get(t.front) == b"Alex")
    alex.update(display_name="Lex", color="abcdef")
    await _dispatch(deployment, system_creds, "UPDATE_MEMBER", alex["uuid"], {"display_name": "Lex", "color": "abcdef"})
    await deployment.work(FAST)
    got = await watch.until(lambda g: g.get(t.front) == b"Lex")
    assert json.loads(got[t.attributes])["color"] == "#abcdef"
    assert t.event("UPDATE_MEMBER") not in got  # the filter governs events/<TYPE> only


async def test_nobody_fronting_is_none_not_an_empty_payload(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker)
    t = _topics(fake_system)
    alex = fake_pk.add_member(fake_system, "Alex")
    await _switch(deployment, system_creds, fake_pk, fake_system, [alex])
    await _switch(deployment, system_creds, fake_pk, fake_system, [])  # switch-out
    await deployment.work(FAST)
    state = await subscribe([t.front, t.count, t.fronters])
    got = await state.until(lambda g: {t.front, t.count, t.fronters} <= set(g))
    assert (got[t.front], got[t.count], json.loads(got[t.fronters])) == (b"none", b"0", [])


async def test_the_last_will_says_offline_when_the_worker_process_is_killed(
    deployment: Deployment, mqtt_broker: Broker, fake_system: FakeSystem, subscribe: Callable,
    redis_server: Any,
) -> None:
    _with_mqtt(deployment, mqtt_broker)
    add_to_config(deployment.config_file, {"redis": {"url": redis_server.url}})
    t = _topics(fake_system)
    status = await subscribe([t.status, t.discovery])
    worker = _worker(deployment.config_file)
    try:
        got = await status.until(lambda g: g.get(t.status) == b"online" and t.discovery in g, timeout=60)
        assert json.loads(got[t.discovery])["avty_t"] == t.status  # every entity follows it
        worker.kill()
        worker.wait()
        await status.until(lambda g: g.get(t.status) == b"offline")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


async def test_a_burst_of_switches_is_published_once_settled(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker, front_debounce_s=2.0)
    t = _topics(fake_system)
    alex, sam, kim = (fake_pk.add_member(fake_system, n) for n in ("Alex", "Sam", "Kim"))
    async with _running(deployment):
        seen = await subscribe([t.front, t.switch, t.event("CREATE_SWITCH")])
        await seen.until(lambda g: g.get(t.front) == b"none")  # announced on connect: nobody yet
        for member in (alex, sam, kim):
            await _switch(deployment, system_creds, fake_pk, fake_system, [member])
        await seen.until(lambda g: seen.count[t.event("CREATE_SWITCH")] == 3)  # immediate
        last_event = seen.at[t.event("CREATE_SWITCH")]
        await seen.until(lambda g: g.get(t.front) == b"Kim")
        assert seen.seen[t.front] == [b"none", b"Kim"]  # neither Alex nor Sam flashed by
        assert seen.at[t.front] - last_event >= 1.8
        fired = await seen.until(lambda g: t.switch in g)
        assert seen.count[t.switch] == 1 and json.loads(fired[t.switch])["fronters"] == ["Kim"]


async def test_a_deleted_member_s_sensor_is_removed_from_discovery(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker, members="all")
    t = _topics(fake_system)
    alex, sam = fake_pk.add_member(fake_system, "Alex"), fake_pk.add_member(fake_system, "Sam")
    for member in (alex, sam):
        await _dispatch(deployment, system_creds, "CREATE_MEMBER", member["uuid"], {"name": member["name"]})
    await _switch(deployment, system_creds, fake_pk, fake_system, [sam])
    await deployment.work(FAST)
    watch = await subscribe([t.discovery, f"{t.base}/members/#"])
    got = await watch.until(lambda g: f"member_{sam['id']}" in json.loads(g.get(t.discovery, b"{}")).get("cmps", {})
                            and len([k for k in g if k.startswith(f"{t.base}/members/")]) == 2)
    assert got[t.fronting(sam["id"])] == b"ON" and got[t.fronting(alex["id"])] == b"OFF"
    sensor = json.loads(got[t.discovery])["cmps"][f"member_{sam['id']}"]
    assert sensor["p"] == "binary_sensor" and sensor["stat_t"] == t.fronting(sam["id"])
    del fake_system.members[alex["uuid"]]
    await _dispatch(deployment, system_creds, "DELETE_MEMBER", alex["uuid"], None)
    await deployment.work(FAST)
    got = await watch.until(lambda g: json.loads(g[t.discovery])["cmps"][f"member_{alex['id']}"] == {
        "p": "binary_sensor"})
    assert json.loads(got[t.discovery])["cmps"][f"member_{sam['id']}"]["stat_t"] == t.fronting(sam["id"])


async def test_the_per_entity_config_of_earlier_versions_is_migrated_and_cleared(
    deployment: Deployment, fake_pk: FakePluralKit, fake_system: FakeSystem, mqtt_broker: Broker,
    subscribe: Callable,
) -> None:
    t = _topics(fake_system)
    async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as old_version:
        await old_version.publish(t.legacy_discovery, json.dumps({"name": "Current fronter", "stat_t": t.front}),
                                  qos=1, retain=True)
    legacy = await subscribe([t.legacy_discovery, t.discovery])
    await legacy.until(lambda g: t.legacy_discovery in g)
    _with_mqtt(deployment, mqtt_broker)
    async with _running(deployment):
        await legacy.until(lambda g: g.get(t.legacy_discovery) == b"" and t.discovery in g)
    # Home Assistant's order: unload the old entity, take it over by device discovery, clear.
    assert [json.loads(p) if p else p for p in legacy.seen[t.legacy_discovery][1:]] == [
        {"migrate_discovery": True}, b""]
    assert legacy.at[t.discovery] < legacy.at[t.legacy_discovery]


async def test_home_assistant_coming_online_gets_discovery_again(
    deployment: Deployment, fake_system: FakeSystem, mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker)
    t = _topics(fake_system)
    async with _running(deployment):
        watch = await subscribe([t.discovery])
        await watch.until(lambda g: t.discovery in g)
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as home_assistant:
            await home_assistant.publish(ha.BIRTH_TOPIC, b"online", qos=1)
        await watch.until(lambda g: watch.count[t.discovery] == 2)


async def test_one_worker_keeps_one_connection_and_announces_once(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    """Home Assistant sees one discovery config, not one per switch (nor a reconnect per event)."""
    _with_mqtt(deployment, mqtt_broker)
    t = _topics(fake_system)
    members = [fake_pk.add_member(fake_system, name) for name in ("Alex", "Sam", "Kim")]
    seen = await subscribe([t.discovery, t.front, f"{t.base}/events/#", t.status])
    for member in members:
        await _switch(deployment, system_creds, fake_pk, fake_system, [member])
    await deployment.work(FAST)
    await seen.until(lambda g: seen.count[t.event("CREATE_SWITCH")] == 3 and g.get(t.front) == b"Kim")
    assert seen.count[t.discovery] == 1 and seen.seen[t.status] == [b"online", b"offline"]


async def test_a_broker_restart_delays_delivery_and_loses_nothing(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker)
    t = _topics(fake_system)
    alex = fake_pk.add_member(fake_system, "Alex")
    mqtt_broker.stop()
    await _switch(deployment, system_creds, fake_pk, fake_system, [alex])
    worker = asyncio.create_task(deployment.work(RetryPolicy(base=0.2, cap=0.5)))
    engine = db.create_engine(deployment.live().current.database_url)

    async def failed_once() -> bool:
        async with engine.connect() as conn:
            return bool((await conn.execute(sa.select(db.deliveries.c.attempts))).scalar())

    await until(failed_once, 20, "a failed delivery attempt")
    mqtt_broker.start()
    await asyncio.wait_for(worker, 60)
    async with engine.connect() as conn:
        delivery = (await conn.execute(sa.select(db.deliveries))).one()
    await engine.dispose()
    assert delivery.status == "delivered" and delivery.attempts >= 2
    state = await subscribe([t.front])
    assert (await state.until(lambda g: t.front in g))[t.front] == b"Alex"


# Home Assistant's MQTT discovery rules, as its source states them (homeassistant/
# components/mqtt: abbreviations.py, schemas.py DEVICE_DISCOVERY_SCHEMA, discovery.py,
# and each platform's schema), for the keys pkrelay uses; conventions of 2025.10+.
ABBREVIATIONS = {
    "avty_t": "availability_topic", "cmps": "components", "def_ent_id": "default_entity_id", "dev": "device",
    "evt_typ": "event_types", "ic": "icon", "json_attr_t": "json_attributes_topic", "name": "name",
    "o": "origin", "p": "platform", "stat_cla": "state_class", "stat_t": "state_topic", "uniq_id": "unique_id",
    "qos": "qos",
}
DEVICE_ABBREVIATIONS = {"ids": "identifiers", "name": "name", "mf": "manufacturer", "mdl": "model",
                        "sw": "sw_version"}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}
# DEVICE_DISCOVERY_SCHEMA: availability options, device, components, origin, state/command topic, qos, encoding.
DEVICE_LEVEL = {"availability", "availability_mode", "availability_template", "availability_topic",
                "payload_available", "payload_not_available", "device", "components", "origin", "state_topic",
                "command_topic", "qos", "encoding"}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "event": {"state_topic", "event_types"}}
DISCOVERY_TOPIC = re.compile(r"^homeassistant/device/[a-zA-Z0-9_-]+/config$")


def _expand(obj: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
    unknown = set(obj) - set(table) - set(table.values())
    assert not unknown, f"keys Home Assistant does not know: {unknown}"
    return {table.get(k, k): v for k, v in obj.items()}


def test_discovery_payloads_follow_home_assistant_s_schema() -> None:
    t = ha.Topics("pkrelay", "abcde")
    members = [{"id": "qwert", "uuid": "u1", "name": "Alex"}, {"id": "yuiop", "uuid": "u2", "name": "Sam"}]
    config = ha.device_config(t, ha.components(t, ha.selected(members, "all")), {"member_gone": "binary_sensor"})
    assert DISCOVERY_TOPIC.match(t.discovery)
    top = _expand(config, ABBREVIATIONS)
    assert set(top) <= DEVICE_LEVEL and {"device", "components", "origin"} <= set(top)
    device = _expand(top["device"], DEVICE_ABBREVIATIONS)
    assert device["identifiers"] and isinstance(device["identifiers"], list)
    assert "name" in _expand(top["origin"], ORIGIN_ABBREVIATIONS)
    unique_ids = set()
    for cid, component in top["components"].items():
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", cid)
        comp = _expand(component, ABBREVIATIONS)
        platform = comp["platform"]
        if comp == {"platform": platform}:
            continue  # a removal: only the platform
        assert "object_id" not in comp and REQUIRED[platform] <= set(comp)
        domain, _, object_id = comp["default_entity_id"].partition(".")
        assert domain == platform and re.fullmatch(r"[a-z0-9_]+", object_id)
        unique_ids.add(comp["unique_id"])
        if platform == "event":
            assert comp["event_types"] == ["switch"]
    assert len(unique_ids) == 5 and top["components"]["member_gone"] == {"p": "binary_sensor"}
    assert len(ha.front_state([{"name": "x" * 300}])) == ha.STATE_MAX
