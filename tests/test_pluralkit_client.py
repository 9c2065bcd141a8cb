"""The API client against the fake PluralKit server: limits kept, every answer handled."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from pkrelay.pluralkit import errors
from pkrelay.pluralkit.client import PluralKitClient, reset_seconds, shared_http
from pkrelay.redis_server import EmbeddedRedis
from tests.fakepk.api import FakePluralKit, FakeSystem, max_in_any_second


def _client(fake: FakePluralKit, redis_url: str, token: str = "", rate: float = 10, **kw: object) -> PluralKitClient:
    return PluralKitClient(base_url=fake.base_url, user_agent="pkrelay-tests", redis=Redis.from_url(redis_url),
                           token=token, rate=rate, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def client(fake_pk: FakePluralKit, fake_system: FakeSystem,
                 redis_server: EmbeddedRedis) -> AsyncIterator[PluralKitClient]:
    c = _client(fake_pk, redis_server.url, fake_system.token)
    yield c
    await c.aclose()


def _hammer(base_url: str, redis_url: str, token: str, ref: str, count: int, rate: float) -> None:
    async def run() -> None:
        client = PluralKitClient(base_url=base_url, user_agent="pkrelay-tests", redis=Redis.from_url(redis_url),
                                 token=token, rate=rate, max_wait=60)
        for _ in range(count):
            await client.system(ref)
        await client.aclose()

    asyncio.run(run())


def test_four_processes_sharing_a_token_stay_within_the_limit(
    fake_pk: FakePluralKit, fake_system: FakeSystem, redis_server: EmbeddedRedis
) -> None:
    """PluralKit's documented 10/s, counted where it counts: on arrival at the server."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(fake_pk.base_url, redis_server.url, fake_system.token,
                                               fake_system.uuid, 25, 10)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(fake_pk.journal) == 100
    assert [j.status for j in fake_pk.journal if j.status != 200] == []
    assert max_in_any_second(j.at for j in fake_pk.journal) <= 10


async def test_a_429_is_waited_out_never_retried_early(client: PluralKitClient, fake_pk: FakePluralKit,
                                                      fake_system: FakeSystem) -> None:
    fake_pk.inject(429, {"message": "429: too many requests", "retry_after": 400, "scope": "own_system_get",
                         "code": 0})
    system = await client.system()
    assert system.uuid == fake_system.uuid
    refused, answered = fake_pk.journal
    assert (refused.status, answered.status) == (429, 200)
    assert answered.at - refused.at >= 0.4 + 1 / 10  # retry_after plus one interval


async def test_retry_after_zero_still_backs_off(client: PluralKitClient, fake_pk: FakePluralKit) -> None:
    fake_pk.inject(429, {"message": "429: too many requests", "retry_after": 0, "scope": "own_system_get",
                         "code": 0})
    await client.system()
    refused, answered = fake_pk.journal
    assert answered.at - refused.at >= 1 / 10


@pytest.mark.parametrize("reset_in_ms", [False, True])
async def test_reset_in_seconds_or_milliseconds_keeps_a_too_eager_client_out_of_trouble(
    fake_pk: FakePluralKit, fake_system: FakeSystem, redis_server: EmbeddedRedis, reset_in_ms: bool
) -> None:
    """The client believes it may send 20/s; the server allows 5/s and says so in its headers."""
    fake_pk.rates["get"] = 5
    fake_pk.reset_in_ms = reset_in_ms
    client = _client(fake_pk, redis_server.url, fake_system.token, rate=20, max_wait=30)
    for _ in range(15):
        await client.system()
    await client.aclose()
    statuses = [j.status for j in fake_pk.journal]
    assert statuses.count(200) == 15
    assert statuses.count(429) <= 1  # the headers, not refusals, set the pace
    assert "429,429" not in ",".join(map(str, statuses))


def test_reset_header_accepts_both_units() -> None:
    assert reset_seconds("1795400000") == 1795400000
    assert reset_seconds("1795400000123") == pytest.approx(1795400000.123)


async def test_gets_are_retried_on_5xx_and_timeouts(
    fake_pk: FakePluralKit, fake_system: FakeSystem, redis_server: EmbeddedRedis
) -> None:
    member = fake_pk.add_member(fake_system, "Alex")
    client = _client(fake_pk, redis_server.url, fake_system.token)
    fake_pk.inject(503, {"code": 0, "message": "bad gateway"}, count=2)
    assert (await client.member(member["uuid"])).name == "Alex"
    assert [j.status for j in fake_pk.journal] == [503, 503, 200]

    fake_pk.journal.clear()
    fake_pk.inject(503, {"code": 0, "message": "bad gateway"}, count=4)
    with pytest.raises(errors.ServerError):
        await client.member(member["uuid"])
    assert [j.status for j in fake_pk.journal] == [503] * 4  # the first try and three retries, then the error
    await client.aclose()

    slow = _client(fake_pk, redis_server.url, fake_system.token, timeout=0.2, retries=2)
    fake_pk.delay = 0.5
    fake_pk.journal.clear()
    with pytest.raises(errors.TransportError):
        await slow.member(member["uuid"])
    fake_pk.delay = 0
    await asyncio.sleep(0.6)  # let the fake finish the abandoned requests before reading its journal
    assert [j.method for j in fake_pk.journal] == ["GET", "GET", "GET"]
    await slow.aclose()


async def test_privacy_and_errors_come_back_as_types(
    fake_pk: FakePluralKit, fake_system: FakeSystem, redis_server: EmbeddedRedis
) -> None:
    member = fake_pk.add_member(fake_system, "Alex", description="diary", pronouns="they/them")
    member["privacy"]["description_privacy"] = "private"
    anonymous = _client(fake_pk, redis_server.url)
    owner = _client(fake_pk, redis_server.url, fake_system.token)
    seen = await anonymous.member(member["uuid"])
    assert seen.description is None and seen.pronouns == "they/them"
    assert (await owner.member(member["uuid"])).description == "diary"
    assert await owner.fronters() is None  # never switched: 204
    fake_system.system["privacy"]["member_list_privacy"] = "private"
    with pytest.raises(errors.Forbidden) as forbidden:
        await anonymous.members(fake_system.uuid)
    assert forbidden.value.code == 30001
    assert len(await owner.members()) == 1
    with pytest.raises(errors.NotFound) as missing:
        await anonymous.member("nosuch")
    assert missing.value.code == 20001
    with pytest.raises(errors.Unauthorized):
        await _client(fake_pk, redis_server.url, "not-a-token").system()
    await anonymous.aclose()
    await owner.aclose()


async def test_no_token_in_logs_or_errors(
    fake_pk: FakePluralKit, fake_system: FakeSystem, redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(fake_pk, redis_server.url, fake_system.token, timeout=0.2, retries=1)
    fake_pk.inject(404, {"code": 20002, "message": "Member not found."})
    messages = []
    for call in (client.member("x"), client.system()):
        try:
            await call
        except errors.PluralKitError as exc:
            messages.append(f"{exc!s} {exc!r}")
    fake_pk.delay = 0.5
    try:
        await client.system()
    except errors.PluralKitError as exc:
        messages.append(f"{exc!s} {exc!r}")
    fake_pk.delay = 0
    await client.aclose()
    assert messages
    assert fake_system.token not in caplog.text
    assert all(fake_system.token not in m for m in messages)


async def test_max_rate_caps_every_token_together(fake_pk: FakePluralKit, redis_server: EmbeddedRedis) -> None:
    """`pluralkit.max_rate`: clients of different tokens (each well within its own rate)
    share one overall budget, enforced by the same limiter."""
    systems = [fake_pk.add_system(f"S{i}") for i in range(3)]
    clients = [_client(fake_pk, redis_server.url, s.token, max_rate=3, max_wait=60) for s in systems]

    async def ask(client: PluralKitClient) -> None:
        for _ in range(3):
            await client.system("@me")

    await asyncio.gather(*(ask(c) for c in clients))
    for c in clients:
        await c.aclose()
    times = [j.at for j in fake_pk.journal if j.status == 200]
    assert len(times) == 9
    # 10/s per token, 3/s for all of them (one more at the server when a loaded machine
    # delays a request past the limiter's margin); without the cap all 9 in a few ms.
    assert max_in_any_second(times) <= 4
    assert max(times) - min(times) >= 2.0


async def test_clients_of_many_tokens_share_one_connection_pool(fake_pk: FakePluralKit,
                                                                redis_server: EmbeddedRedis) -> None:
    """Each client sends its own token on a shared pool: every answer is its owner's."""
    systems = [fake_pk.add_system(f"S{i}") for i in range(5)]
    http = shared_http(fake_pk.base_url, "pkrelay-tests")
    clients = [PluralKitClient(base_url=fake_pk.base_url, user_agent="pkrelay-tests", redis=Redis.from_url(
        redis_server.url), token=s.token, http=http) for s in systems]
    answers = await asyncio.gather(*(c.system("@me") for c in clients))
    assert [a.uuid for a in answers] == [s.uuid for s in systems]
    for c in clients:
        await c.aclose()  # the pool is not theirs to close
    assert not http.is_closed
    await http.aclose()
