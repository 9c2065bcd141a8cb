"""MQTT sinks against a real broker process: events, retained front state, discovery."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable

import aiomqtt
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from pkrelay import db
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.harness import Deployment
from tests.mqtt_broker import Broker
from workers.deliveries import RetryPolicy


class Subscriber:
    """Collects what the broker sends on some topics (retained messages included)."""

    def __init__(self, broker: Broker, topics: list[str]) -> None:
        self.broker, self.topics = broker, topics
        self.got: dict[str, bytes] = {}
        self.count: Counter[str] = Counter()
        self._changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"test-{id(self)}") as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            ready.set()
            async for message in client.messages:
                self.got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
                self.count[str(message.topic)] += 1
                self._changed.set()

    async def until(self, done: Callable[[dict[str, bytes]], bool], timeout: float = 15) -> dict[str, bytes]:
        async with asyncio.timeout(timeout):
            while not done(self.got):
                self._changed.clear()
                await self._changed.wait()
        return self.got


@pytest.fixture
async def subscribe(mqtt_broker: Broker) -> AsyncIterator[Callable[[list[str]], object]]:
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


def _with_mqtt(deployment: Deployment, broker: Broker) -> None:
    text = deployment.config_file.read_text()
    deployment.config_file.write_text(text + f'\n[[sinks]]\ntype = "mqtt"\nurl = "{broker.url}"\n'
                                      'topic_prefix = "pkrelay"\nhomeassistant_discovery = true\n')


async def _switch(deployment: Deployment, creds: dict[str, str], fake_pk: FakePluralKit, system: FakeSystem,
                  members: list[dict]) -> str:
    switch = fake_pk.add_switch(system, [m["uuid"] for m in members])
    async with AsyncTestClient(app=deployment.app()) as client:
        content = body("CREATE_SWITCH", creds["signing_token"], creds["system_id"], switch["id"],
                       {"id": switch["id"], "timestamp": switch["timestamp"], "members": [m["uuid"] for m in members]})
        assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200
    return switch["id"]


async def test_a_switch_publishes_the_event_the_front_and_discovery(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker)
    short = fake_system.system["id"]
    alex = fake_pk.add_member(fake_system, "Alex", color="ff00aa", avatar_url="https://img.example/alex.png")
    sam = fake_pk.add_member(fake_system, "Sam", display_name="Sammy")
    events = await subscribe([f"pkrelay/{short}/events/#"])
    await _switch(deployment, system_creds, fake_pk, fake_system, [alex, sam])
    await deployment.work(RetryPolicy(base=0.1, cap=0.2))
    got = await events.until(lambda g: f"pkrelay/{short}/events/CREATE_SWITCH" in g)
    [row] = await deployment.logged()
    envelope = json.loads(got[f"pkrelay/{short}/events/CREATE_SWITCH"])
    assert envelope["id"] == row.id and [m["name"] for m in envelope["entity"]["members"]] == ["Alex", "Sam"]

    discovery = f"homeassistant/sensor/pkrelay_{short}/front/config"
    state = await subscribe([f"pkrelay/{short}/fronters", f"pkrelay/{short}/front", f"pkrelay/{short}/front/#",
                             discovery])  # a newcomer gets the retained state
    retained = await state.until(lambda g: {f"pkrelay/{short}/front", f"pkrelay/{short}/fronters",
                                            f"pkrelay/{short}/front/attributes", discovery} <= set(g))
    assert retained[f"pkrelay/{short}/front"] == b"Alex"
    assert [m["name"] for m in json.loads(retained[f"pkrelay/{short}/fronters"])] == ["Alex", "Sam"]
    attributes = json.loads(retained[f"pkrelay/{short}/front/attributes"])
    assert attributes["color"] == "#ff00aa" and attributes["avatar_url"] == "https://img.example/alex.png"
    assert attributes["fronters"] == ["Alex", "Sammy"]
    config = json.loads(retained[discovery])
    assert config["state_topic"] == f"pkrelay/{short}/front"
    assert config["json_attributes_topic"] == f"pkrelay/{short}/front/attributes"
    assert config["unique_id"] == f"pkrelay_{short}_front" and config["device"]["identifiers"]


async def test_one_worker_keeps_one_connection_and_announces_once(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    """Home Assistant sees one discovery config, not one per switch (nor a reconnect per event)."""
    _with_mqtt(deployment, mqtt_broker)
    short = fake_system.system["id"]
    members = [fake_pk.add_member(fake_system, name) for name in ("Alex", "Sam", "Kim")]
    discovery, front = f"homeassistant/sensor/pkrelay_{short}/front/config", f"pkrelay/{short}/front"
    seen = await subscribe([discovery, front, f"pkrelay/{short}/events/#"])
    for member in members:
        await _switch(deployment, system_creds, fake_pk, fake_system, [member])
    await deployment.work(RetryPolicy(base=0.1, cap=0.2))
    await seen.until(lambda g: seen.count[f"pkrelay/{short}/events/CREATE_SWITCH"] == 3 and seen.count[front] == 3)
    assert seen.count[discovery] == 1


async def test_a_broker_restart_delays_delivery_and_loses_nothing(
    deployment: Deployment, system_creds: dict[str, str], fake_pk: FakePluralKit, fake_system: FakeSystem,
    mqtt_broker: Broker, subscribe: Callable,
) -> None:
    _with_mqtt(deployment, mqtt_broker)
    short = fake_system.system["id"]
    alex = fake_pk.add_member(fake_system, "Alex")
    mqtt_broker.stop()
    await _switch(deployment, system_creds, fake_pk, fake_system, [alex])
    worker = asyncio.create_task(deployment.work(RetryPolicy(base=0.2, cap=0.5)))
    engine = db.create_engine(deployment.live().current.database_url)

    async def failed_once() -> bool:
        async with engine.connect() as conn:
            attempts = (await conn.execute(sa.select(db.deliveries.c.attempts))).scalar()
        return bool(attempts)

    async with asyncio.timeout(20):
        while not await failed_once():
            await asyncio.sleep(0.05)
    mqtt_broker.start()
    await asyncio.wait_for(worker, 60)
    async with engine.connect() as conn:
        delivery = (await conn.execute(sa.select(db.deliveries))).one()
    await engine.dispose()
    assert delivery.status == "delivered" and delivery.attempts >= 2
    state = await subscribe([f"pkrelay/{short}/front"])
    assert (await state.until(lambda g: f"pkrelay/{short}/front" in g))[f"pkrelay/{short}/front"] == b"Alex"
