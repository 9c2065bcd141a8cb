"""Sinks' `template`, `content_type`, `headers` and `filter`, against a fake ntfy."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from pkrelay import config, db
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import deploy, webhook_sink, write_config
from tests.fakepk.api import FakePluralKit
from tests.fakepk.dispatcher import MEMBER_ID, FakeDispatcher, body
from tests.harness import Deployment
from tests.sink_server import SinkServer

FAST = RetryPolicy(base=0.05, cap=0.2, window=3600)


@pytest.fixture
def ntfy() -> SinkServer:
    server = SinkServer()
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


async def _dispatch(dep: Deployment, creds: dict[str, str], *names: str) -> None:
    async with AsyncTestClient(app=dep.app()) as client:
        for name in names:
            content = body("UPDATE_MEMBER", creds["signing_token"], creds["system_id"], MEMBER_ID, {"name": name})
            assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200


async def _deliveries(dep: Deployment) -> list[sa.Row]:
    engine = db.create_engine(dep.live().current.database_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.select(db.deliveries).order_by(db.deliveries.c.event_id))).all())
    finally:
        await engine.dispose()


async def test_a_template_filter_and_headers_shape_what_a_fake_ntfy_gets(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], ntfy: SinkServer,
    fake_pk: FakePluralKit, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NTFY_AUTH", "Bearer tk_secret_0123")
    sink = webhook_sink(ntfy.url, name="ntfy", template="{{ data.name }} was renamed ({{ type | lower }})",
                        content_type="text/plain", headers={"Title": "Renamed", "Authorization": "env:NTFY_AUTH"},
                        filter="type == 'UPDATE_MEMBER' && data.name != 'Kim'")
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[sink])
    assert "Bearer tk_secret_0123" in dep.live().current.secrets()  # redacted from every log line
    await _dispatch(dep, system_creds, "Sam", "Kim")
    await dep.work(FAST)
    [got] = ntfy.received
    assert got.body == b"Sam was renamed (update_member)"
    assert got.headers["content-type"] == "text/plain" and got.headers["title"] == "Renamed"
    assert got.headers["authorization"] == "Bearer tk_secret_0123"
    assert got.headers["webhook-id"]  # still signed-ready: the sink's headers add, never replace
    sam, kim = await _deliveries(dep)
    assert (sam.status, kim.status) == ("delivered", "skipped")
    assert kim.last_error == "the sink's filter is false for this event"


async def test_a_template_that_fails_to_render_is_a_failed_delivery_naming_the_error(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], ntfy: SinkServer,
    fake_pk: FakePluralKit,
) -> None:
    sink = webhook_sink(ntfy.url, template='{"name": {{ data.missing.deeper | tojson }}}')
    dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds], sinks=[sink])
    await _dispatch(dep, system_creds, "Sam")
    await dep.work(RetryPolicy(base=0.02, cap=0.05, window=0.3))
    [delivery] = await _deliveries(dep)
    assert delivery.status == "dead" and delivery.attempts >= 2 and not ntfy.received
    assert delivery.last_error.startswith("template: UndefinedError:") and "missing" in delivery.last_error


def test_the_sandbox_refuses_what_a_template_must_not_do(tmp_path: Path) -> None:
    from pkrelay import shaping

    with pytest.raises(shaping.RenderError, match="SecurityError"):
        shaping.render("{{ data.update({'x': 1}) }}", {"data": {}})  # immutable: no mutation
    with pytest.raises(shaping.RenderError, match="SecurityError"):
        shaping.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_an_invalid_template_or_filter_is_a_config_error_naming_the_sink(tmp_path: Path) -> None:
    path = tmp_path / "pkrelay.toml"
    for bad, named in [({"template": "{{ data.name "}, r"sinks\.0\.template \(sink 'chat'\): unexpected end"),
                       ({"filter": "type == "}, r"sinks\.0\.filter \(sink 'chat'\): ")]:
        write_config(path, {"sinks": [webhook_sink("http://127.0.0.1:9/hook", name="chat", **bad)]})
        with pytest.raises(config.ConfigError, match=named):
            config.load(path, {})
    write_config(path, {"sinks": [webhook_sink("http://127.0.0.1:9/hook", template="{{ type }}", filter="data")]})
    assert config.load(path, {}).sinks[0].template == "{{ type }}"


def test_a_filter_is_truthy_as_jmespath_means_it() -> None:
    from pkrelay.shaping import matches

    envelope = {"type": "CREATE_SWITCH", "entity": {"members": []}, "n": 0}
    assert matches("type == 'CREATE_SWITCH'", envelope) and matches("n", envelope)  # 0 is true in JMESPath
    assert not matches("entity.members", envelope) and not matches("nothing", envelope)
    assert not matches("length(nothing) > `0`", envelope)  # an error on this envelope: not sent
