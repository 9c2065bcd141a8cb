"""/public/{name}/front and its stream, served for real: privacy, CORS, ETag/304, 404s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from pkrelay.redis_server import EmbeddedRedis, free_port
from tests.deployment import deploy
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import body, new_token
from tests.servers import ThreadedServer
from tests.test_stream import FAST, Served, Stream

PRIVATE_MEMBER = {"visibility": "private"}


@asynccontextmanager
async def serve_public(tmp_path: Path, redis: EmbeddedRedis, fake: FakePluralKit, public: dict[str, Any],
                       *more: dict[str, Any], server: dict[str, Any] | None = None) -> AsyncIterator[Served]:
    """The receiver of a deployment whose first system has public_front, served for real."""
    dep = await deploy(tmp_path, redis, fake, [{**public, "public_front": True}, *more], server=server or {})
    app = dep.app()
    app.state.stream = FAST
    port = free_port()
    threaded = ThreadedServer(app, port)
    threaded.start()
    try:
        yield Served(dep, app, f"http://127.0.0.1:{port}", public)
    finally:
        threaded.stop()


def member(fake: FakePluralKit, system: FakeSystem, name: str, **fields: Any) -> dict[str, Any]:
    privacy = fields.pop("privacy", {})
    created = fake.add_member(system, name, **fields)
    created["privacy"].update(privacy)
    return created


async def switch(served: Served, fake: FakePluralKit, system: FakeSystem, members: list[dict[str, Any]]) -> str:
    """A switch logged in the fake and dispatched; returns its timestamp."""
    made = fake.add_switch(system, [m["uuid"] for m in members])
    await served.dispatch(body("CREATE_SWITCH", served.creds["signing_token"], system.uuid, made["id"],
                               {"id": made["id"], "timestamp": made["timestamp"],
                                "members": [m["uuid"] for m in members]}))
    await served.dep.work()
    return str(made["timestamp"])


async def system_changed(served: Served, system: FakeSystem) -> None:
    """An UPDATE_SYSTEM dispatched and worked: the store holds the system as the API has it."""
    await served.dispatch(body("UPDATE_SYSTEM", served.creds["signing_token"], system.uuid, None,
                               {"name": system.system["name"]}))
    await served.dep.work()


@pytest.fixture
def other_creds(fake_pk: FakePluralKit) -> dict[str, str]:
    """A second configured system, its front not public (the default)."""
    other = fake_pk.add_system("Other")
    return {"name": "other", "system_id": other.uuid, "signing_token": new_token(), "api_token": other.token}


async def test_the_front_shows_only_what_the_system_shows_publicly(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem,
) -> None:
    fake_system.system.update(name="The Lanterns", tag="| 🏮", color="e8a33d", avatar_url="https://cdn.example/s.png")
    ash = member(fake_pk, fake_system, "Ash", display_name="Ash 🌿", pronouns="she/her", color="ff6a00",
                 avatar_url="https://cdn.example/ash.png", description="a private diary",
                 privacy={"description_privacy": "private"})
    hidden = member(fake_pk, fake_system, "Hidden-Member", privacy=PRIVATE_MEMBER)
    cy = member(fake_pk, fake_system, "Real-Name-Cy", display_name="Secret-Display-Cy", pronouns="they/them",
                privacy={"name_privacy": "private"})
    dee = member(fake_pk, fake_system, "Dee", pronouns="secret/pronouns", avatar_url="https://cdn.example/dee.png",
                 privacy={"pronoun_privacy": "private", "avatar_privacy": "private"})
    async with serve_public(tmp_path, redis_server, fake_pk, system_creds) as served, httpx.AsyncClient() as client:
        await system_changed(served, fake_system)
        since = await switch(served, fake_pk, fake_system, [ash, hidden, cy, dee])
        answer = await client.get(served.url + "/public/home/front")
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "*"
        assert answer.headers["cache-control"] == "max-age=5"
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json() == {
            "system": {"name": "The Lanterns", "tag": "| 🏮", "avatar_url": "https://cdn.example/s.png",
                       "color": "e8a33d"},
            "fronters": [
                {"name": "Ash", "display_name": "Ash 🌿", "pronouns": "she/her",
                 "avatar_url": "https://cdn.example/ash.png", "color": "ff6a00"},
                {"name": None, "display_name": None, "pronouns": "they/them", "avatar_url": None, "color": None},
                {"name": "Dee", "display_name": None, "pronouns": None, "avatar_url": None, "color": None},
            ],
            "since": since,
        }
        for secret in ("Hidden-Member", "Real-Name-Cy", "Secret-Display-Cy", "secret/pronouns", "dee.png", "diary"):
            assert secret not in answer.text

        # A member's edit shows at once: the front is read with each member as it is now.
        cy["privacy"]["name_privacy"] = "public"
        await served.dispatch(body("UPDATE_MEMBER", served.creds["signing_token"], fake_system.uuid, cy["uuid"],
                                   {"name": cy["name"]}))
        await served.dep.work()
        names = [f["display_name"] for f in (await client.get(served.url + "/public/home/front")).json()["fronters"]]
        assert names == ["Ash 🌿", "Secret-Display-Cy", None]


async def test_a_private_front_shows_no_fronters_and_no_time(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem,
) -> None:
    fake_system.system["privacy"]["front_privacy"] = "private"
    fake_system.system["privacy"]["name_privacy"] = "private"
    async with serve_public(tmp_path, redis_server, fake_pk, system_creds) as served, httpx.AsyncClient() as client:
        await system_changed(served, fake_system)
        await switch(served, fake_pk, fake_system, [member(fake_pk, fake_system, "Ash")])
        answer = (await client.get(served.url + "/public/home/front")).json()
        assert answer["fronters"] == [] and answer["since"] is None
        assert answer["system"]["name"] is None
        assert "Ash" not in str(answer) and "Example" not in str(answer)


async def test_a_system_the_store_does_not_know_shows_nobody(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem,
) -> None:
    async with serve_public(tmp_path, redis_server, fake_pk, system_creds) as served, httpx.AsyncClient() as client:
        await switch(served, fake_pk, fake_system, [member(fake_pk, fake_system, "Ash")])  # no system row yet
        assert (await client.get(served.url + "/public/home/front")).json() == {
            "system": {"name": None, "tag": None, "avatar_url": None, "color": None}, "fronters": [], "since": None}


async def test_etag_answers_304_and_changes_with_the_front(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem,
) -> None:
    async with serve_public(tmp_path, redis_server, fake_pk, system_creds) as served, httpx.AsyncClient() as client:
        await system_changed(served, fake_system)
        await switch(served, fake_pk, fake_system, [member(fake_pk, fake_system, "Ash")])
        url = served.url + "/public/home/front"
        first = await client.get(url)
        etag = first.headers["etag"]
        assert etag.startswith('"') and first.headers["access-control-expose-headers"] == "ETag"
        again = await client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag and again.headers["cache-control"] == "max-age=5"
        assert again.headers["access-control-allow-origin"] == "*"
        assert (await client.get(url, headers={"If-None-Match": f'"other", W/{etag}'})).status_code == 304
        assert (await client.get(url, headers={"If-None-Match": '"other"'})).status_code == 200

        await switch(served, fake_pk, fake_system, [member(fake_pk, fake_system, "Bo")])
        changed = await client.get(url, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert [f["name"] for f in changed.json()["fronters"]] == ["Bo"]


async def test_a_system_that_is_not_public_is_the_same_404_as_one_that_does_not_exist(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], other_creds: dict[str, str],
    fake_pk: FakePluralKit,
) -> None:
    async with (serve_public(tmp_path, redis_server, fake_pk, system_creds, other_creds) as served,
                httpx.AsyncClient() as client):
        for route in ("front", "front/stream", "widget"):
            private, missing = [await client.get(f"{served.url}/public/{name}/{route}") for name in ("other", "nobody")]
            assert private.status_code == missing.status_code == 404, route
            assert private.content == missing.content, route
            assert dict(private.headers, date="") == dict(missing.headers, date=""), route
            assert "other" not in private.text
        assert (await client.get(served.url + "/public/home/front")).status_code == 200



@asynccontextmanager
async def front_stream(served: Served, name: str = "home") -> AsyncIterator[Stream]:
    async with (httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
                client.stream("GET", f"{served.url}/public/{name}/front/stream") as response):
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["access-control-allow-origin"] == "*"
        connection = Stream(response)
        try:
            yield connection
        finally:
            await connection.close()


async def _next_front(stream: Stream) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(stream.next(), 10)
        if message.comment is None:
            assert message.event is None  # an EventSource's onmessage gets it
            return msgspec.json.decode(message.data or "")


async def test_the_stream_sends_the_front_on_connect_and_on_each_change(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem,
) -> None:
    ash, bo = member(fake_pk, fake_system, "Ash"), member(fake_pk, fake_system, "Bo")
    bystander = member(fake_pk, fake_system, "Cy")
    async with serve_public(tmp_path, redis_server, fake_pk, system_creds,
                            server={"max_streams": 1}) as served, httpx.AsyncClient() as client:
        await system_changed(served, fake_system)
        await switch(served, fake_pk, fake_system, [ash])
        async with front_stream(served) as stream:
            first = await _next_front(stream)
            assert first == (await client.get(served.url + "/public/home/front")).json()
            assert (await client.get(served.url + "/public/home/front/stream")).status_code == 429  # max_streams

            await switch(served, fake_pk, fake_system, [ash, bo])
            assert [f["name"] for f in (await _next_front(stream))["fronters"]] == ["Ash", "Bo"]

            # An edit of someone not fronting, or of nothing shown, sends nothing; a shown one does.
            bystander["description"] = "x"
            bo["description"] = "a private diary"
            bo["privacy"]["description_privacy"] = "private"
            for edited in (bystander, bo):
                await served.dispatch(body("UPDATE_MEMBER", served.creds["signing_token"], fake_system.uuid,
                                           edited["uuid"], {"description": edited["description"]}))
            await served.dep.work()
            assert await stream.until_quiet(time.monotonic()) == []
            bo["pronouns"] = "he/him"
            await served.dispatch(body("UPDATE_MEMBER", served.creds["signing_token"], fake_system.uuid,
                                       bo["uuid"], {"pronouns": "he/him"}))
            await served.dep.work()
            after = await _next_front(stream)
            assert [f["pronouns"] for f in after["fronters"]] == [None, "he/him"]
