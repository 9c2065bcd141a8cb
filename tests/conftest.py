"""Shared fixtures: real servers in temporary directories, never mocks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from pkrelay.redis_server import EmbeddedRedis
from tests import postgres
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, new_token
from tests.harness import Deployment
from tests.mqtt_broker import MOSQUITTO, Broker, Mosquitto

pytest_plugins = ["tests.secrets_scan"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A fresh embedded valkey-server (the one `pkrelay run` uses) per test."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.Cluster]:
    """One throwaway PostgreSQL cluster for the session, in a temporary directory."""
    reason = postgres.unavailable_reason()
    if reason:
        pytest.skip(reason)
    yield from postgres.cluster()


@pytest.fixture
def pg_url(pg_cluster: postgres.Cluster, request: pytest.FixtureRequest) -> str:
    """A fresh database per test."""
    return pg_cluster.create_database(f"t{abs(hash(request.node.nodeid)) % 10**12}")


@pytest.fixture
def fake_pk() -> Iterator[FakePluralKit]:
    """A fake PluralKit API served on loopback, limiter and privacy included."""
    fake = FakePluralKit()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_system(fake_pk: FakePluralKit) -> FakeSystem:
    return fake_pk.add_system("Example")


@pytest.fixture
def system_creds(fake_system: FakeSystem) -> dict[str, str]:
    """The configured system: the fake's, with its API token and a signing token."""
    return {"name": "home", "system_id": fake_system.uuid, "signing_token": new_token(),
            "api_token": fake_system.token}


@pytest.fixture
async def deployment(tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str],
                     fake_pk: FakePluralKit) -> Deployment:
    """A configured pkrelay (one system, SQLite under tmp_path, the fake API), schema migrated."""
    return await deploy(tmp_path, redis_server, fake_pk, [system_creds])


@pytest.fixture
async def client(deployment: Deployment) -> AsyncIterator[AsyncTestClient]:
    """The receiver app of `deployment`, in process, lifespan (spool drainer) running."""
    async with AsyncTestClient(app=deployment.app()) as c:
        yield c


@pytest.fixture
def dispatcher(client: AsyncTestClient) -> FakeDispatcher:
    return FakeDispatcher(client, "/dispatch")


@pytest.fixture(params=["amqtt", "mosquitto"])
def mqtt_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A real MQTT broker process on a free port: amqtt, and Mosquitto where installed."""
    if request.param == "mosquitto" and MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = (Mosquitto if request.param == "mosquitto" else Broker)(tmp_path / "mqtt")
    broker.start()
    yield broker
    broker.stop()
