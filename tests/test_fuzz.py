"""Property-based fuzzing of the edge: the dispatch endpoint and the config loader.

Example counts are bounded (the suite stays fast); hypothesis's example database is
off so a run does not depend on the last one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from pkrelay import config, queue
from pkrelay.pluralkit.dispatch import DATA_MODELS
from tests.fakepk.dispatcher import new_token
from tests.harness import Deployment

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def dispatch_shapes(token: str, system_id: str) -> st.SearchStrategy[bytes]:
    """JSON objects shaped like a dispatch, mostly: known and unknown types, the right
    token, a wrong one or none, fields of the wrong type or length."""
    wrong = new_token()
    fields = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from([*DATA_MODELS, "NEW_THING"]) | st.text(max_size=80) | json_values,
        "signing_token": st.sampled_from([token, token, wrong, ""]) | json_values,
        "system_id": st.sampled_from([system_id, None]) | st.text(max_size=70) | json_values,
        "id": st.none() | st.text(max_size=70) | json_values,
        "data": json_values,
    })
    return fields.map(lambda d: json.dumps(d).encode())


async def _depth(redis_url: str) -> int:
    redis = queue.connect(redis_url)
    try:
        return await queue.depth(redis)
    finally:
        await redis.aclose()


@pytest.fixture
async def fuzz_client(deployment: Deployment) -> Any:
    async with AsyncTestClient(app=deployment.app()) as client:
        yield client


@FUZZ
@given(draw=st.data())
async def test_dispatch_never_answers_5xx_and_queues_nothing_it_refuses(
    fuzz_client: AsyncTestClient, deployment: Deployment, system_creds: dict[str, str], draw: st.DataObject,
) -> None:
    token, system_id = system_creds["signing_token"], system_creds["system_id"]
    content = draw.draw(st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode())
                        | dispatch_shapes(token, system_id))
    before = await _depth(deployment.redis_url)
    response = await fuzz_client.post("/dispatch", content=content)
    assert response.status_code in (200, 400, 401, 413), (response.status_code, response.text)
    assert token not in response.text
    queued = await _depth(deployment.redis_url) - before
    if response.status_code != 200:
        assert queued == 0, response.text
    else:
        is_ping = msgspec.json.decode(content).get("type") == "PING"
        assert queued == (0 if is_ping else 1)


# The config loader: TOML documents of settings (known keys and junk, values of every
# type), with secrets where secrets go. A ConfigError or Settings, never anything
# else, and no error message shows a secret.

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


secrets = st.text("0123456789abcdef", min_size=12, max_size=24).map(lambda s: "sekrit" + s)
scalars = st.booleans() | st.integers(-2, 70000) | st.floats() | st.text(max_size=10) | secrets
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def _table(keys: list[str], secret_keys: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, Any]]:
    known = {k: (secrets | values if k in secret_keys else values) for k in keys}
    return st.fixed_dictionaries({}, optional=known) | st.dictionaries(st.sampled_from([*keys, "junk"]), values,
                                                                        max_size=4)


documents = st.fixed_dictionaries({}, optional={
    "data_dir": values, "log_level": st.sampled_from(["info", "debug", "loud"]) | values,
    "server": _table(["host", "port", "dispatch_path", "public_url", "max_body_bytes", "admin_token"],
                     ("admin_token",)),
    "redis": _table(["url"]),
    "systems": st.lists(_table(["name", "system_id", "signing_token", "api_token", "mode"],
                               ("signing_token", "api_token")), max_size=3),
    "sinks": st.lists(_table(["type", "url", "secret", "events", "name", "topic_prefix"], ("secret",)), max_size=2),
    "junk": values,
})


def _secrets_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _secrets_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in _secrets_in(v)]
    return [node] if isinstance(node, str) and node.startswith("sekrit") else []


@FUZZ
@given(documents | st.text(max_size=200))
def test_the_config_loader_raises_a_config_error_or_loads_and_never_shows_a_secret(
    tmp_path: Path, document: dict[str, Any] | str,
) -> None:
    if isinstance(document, str):
        text, hidden = document, []
    else:
        text = "\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in document.items())
        hidden = _secrets_in(document)
    path = tmp_path / "pkrelay.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config.load(path, environ={})
    except config.ConfigError as exc:
        message = str(exc)
        assert not [s for s in hidden if s in message], message
