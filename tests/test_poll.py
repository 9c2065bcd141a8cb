"""Polling: what no dispatch said becomes an event, once, within the budget."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from arq import create_pool
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from pkrelay import db, keys, status
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store import state
from tests.deployment import deploy, write_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body, new_token
from tests.harness import Deployment
from tests.waiting import until
from workers.poll import poll_tick
from workers.settings import worker_settings


async def _deployment(tmp_path: Path, redis_server: EmbeddedRedis, fake: FakePluralKit, system: FakeSystem, mode: str,
                      **settings: Any) -> tuple[Deployment, dict[str, str]]:
    """`system` configured in `mode`, with its API token and a signing token."""
    creds = {"name": "home", "system_id": system.uuid, "api_token": system.token, "mode": mode,
             "signing_token": new_token()}
    return await deploy(tmp_path, redis_server, fake, [creds], **settings), creds


async def test_a_poll_system_sees_each_change_once(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    a, b, c = (fake_pk.add_member(fake_system, name) for name in ("A", "B", "C"))
    group = fake_pk.add_group(fake_system, "Crew", [a["uuid"]])
    fake_pk.add_switch(fake_system, [a["uuid"]], "2026-11-22T10:00:00.000000Z")
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll")
    t0 = time.time()
    assert await dep.poll(t0) == 0  # the first poll records a baseline
    assert await dep.logged() == []

    switch = fake_pk.add_switch(fake_system, [b["uuid"], a["uuid"]])
    a["name"] = "Alex"
    a["message_count"] = 99  # changes with every message; never an event
    del fake_system.members[c["uuid"]]
    group["members"] = [a["uuid"], b["uuid"]]
    assert await dep.poll(t0 + 60) == 4
    rows = await dep.logged()
    by_type = {r.type: r for r in rows}
    assert sorted(by_type) == ["CREATE_SWITCH", "DELETE_MEMBER", "UPDATE_GROUP_MEMBERS", "UPDATE_MEMBER"]
    assert all(r.source == "poll" and r.system_id == fake_system.uuid for r in rows)
    assert by_type["UPDATE_MEMBER"].data == {"name": "Alex"} and by_type["UPDATE_MEMBER"].previous["name"] == "A"
    assert by_type["DELETE_MEMBER"].entity_id == c["uuid"] and by_type["DELETE_MEMBER"].previous["name"] == "C"
    assert by_type["UPDATE_GROUP_MEMBERS"].data == {"members": [a["uuid"], b["uuid"]]}
    assert by_type["CREATE_SWITCH"].entity_id == switch["id"]
    assert by_type["CREATE_SWITCH"].data["members"] == [b["uuid"], a["uuid"]]
    assert [m["name"] for m in by_type["CREATE_SWITCH"].entity["members"]] == ["B", "Alex"]
    assert await dep.poll(t0 + 120) == 0  # each change once

    # A switch logged in the past shows only in /switches, which lists members by short id:
    # the event still names them as a dispatch would, and carries the full members.
    past = fake_pk.add_switch(fake_system, [b["uuid"]], "2026-11-22T11:00:00.000000Z")
    assert await dep.poll(t0 + 180) == 1
    [backdated] = [r for r in await dep.logged() if r.entity_id == past["id"]]
    assert backdated.type == "CREATE_SWITCH"
    assert backdated.data["members"] == [b["uuid"]] and backdated.data["timestamp"].startswith("2026-11-22T11:00")
    assert [m["name"] for m in backdated.entity["members"]] == ["B"]


async def test_without_a_system_id_every_check_counts_from_the_first_tick(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    """With only an api_token the system's UUID comes from GET /systems/@me once, not
    from the 20-s system check, so a member check 10 s in already sees a rename."""
    a = fake_pk.add_member(fake_system, "A")
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll")
    settings = tomllib.loads(dep.config_file.read_text())
    settings["systems"][0]["system_id"] = ""
    write_config(dep.config_file, settings)
    t0 = time.time()
    assert await dep.poll(t0) == 0
    a["name"] = "Alex"
    assert await dep.poll(t0 + 10) == 1  # the member check is due; the system check is not
    [renamed] = await dep.logged()
    assert renamed.type == "UPDATE_MEMBER" and renamed.system_id == fake_system.uuid


async def test_auto_mode_recovers_lost_dispatches_and_repeats_none(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    members = [fake_pk.add_member(fake_system, f"M{i}") for i in range(10)]
    group = fake_pk.add_group(fake_system, "Crew", [])
    dep, creds = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "auto")
    t0 = time.time()
    await dep.poll(t0)
    async with AsyncTestClient(app=dep.app()) as client:
        dispatcher = FakeDispatcher(client, "/dispatch")
        for i, member in enumerate(members):
            member["description"] = f"changed {i}"
            if i % 10 < 7:  # 30% of the dispatches are lost on the way
                content = body("UPDATE_MEMBER", creds["signing_token"], fake_system.uuid, member["uuid"],
                               {"description": f"changed {i}"})
                assert (await dispatcher.send(content)).status_code == 200
    group["members"] = [members[0]["uuid"]]  # no dispatch exists for this
    await dep.work()
    assert await dep.poll(t0 + 130) == 4  # reconciliation: within 2 minutes
    rows = await dep.logged()
    described = sorted(r.data["description"] for r in rows if r.type == "UPDATE_MEMBER")
    assert described == sorted(f"changed {i}" for i in range(10))  # every change exactly once
    assert [r.source for r in rows if r.type == "UPDATE_MEMBER"].count("poll") == 3
    assert [r.type for r in rows if r.source == "poll"].count("UPDATE_GROUP_MEMBERS") == 1


async def test_a_cleared_webhook_url_switches_auto_to_the_poll_cadence(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    public_url = "https://relay.example.org/dispatch"
    fake_system.system["webhook_url"] = public_url
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "auto",
                               server={"public_url": public_url})
    t0 = time.time()

    def fronter_calls() -> int:
        return sum(1 for j in fake_pk.journal if j.path.endswith("/fronters"))

    await dep.poll(t0)
    await dep.poll(t0 + 3)
    assert fronter_calls() == 1  # auto: fronters every 60 s
    fake_system.system["webhook_url"] = None  # the owner cleared it
    await dep.poll(t0 + 200)
    await dep.poll(t0 + 203)
    await dep.poll(t0 + 206)
    assert fronter_calls() == 4  # poll cadence: every 2 s
    fake_system.system["webhook_url"] = public_url
    await dep.poll(t0 + 400)
    await dep.poll(t0 + 403)
    await dep.poll(t0 + 406)
    assert fronter_calls() == 5  # back to reconciliation


async def test_the_budget_holds_over_a_long_run(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll")
    t0 = time.time()
    for second in range(60):
        await dep.poll(t0 + second)
    gets = [j for j in fake_pk.journal if j.method == "GET"]
    assert len(gets) <= 60 * 1.0 + 6  # poll_budget 1 GET/s, plus the first round
    assert len([j for j in gets if j.path.endswith("/fronters")]) == 30  # fronters most often


async def test_two_workers_one_poller(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll")
    t0 = time.time()
    await asyncio.gather(dep.poll(t0), dep.poll(t0))
    assert len(fake_pk.journal) == 6  # one round of checks, not two


@pytest.mark.fault
async def test_polling_continues_when_the_polling_worker_is_killed(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    """Two `pkrelay worker` processes; the one holding the lease is killed mid-poll."""
    member = fake_pk.add_member(fake_system, "Sam")
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll",
                               redis={"url": redis_server.url})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
    workers = {}
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-m", "pkrelay", "worker", "--config", str(dep.config_file)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers[proc.pid] = proc
    redis = Redis.from_url(redis_server.url)
    engine = db.create_engine(dep.live().current.database_url)

    async def baseline() -> bool:
        async with engine.connect() as conn:
            return bool((await conn.execute(sa.select(sa.func.count()).select_from(db.state)
                                            .where(db.state.c.kind == "member"))).scalar())

    try:
        await until(baseline, 60, "the first poll's baseline")
        # A slow API keeps each poll (and its lease) going for a while, so the test sees
        # the lease held however loaded the machine is, instead of racing a short poll.
        fake_pk.delay = 0.3
        holder = await until(lambda: redis.get(keys.poll("home", "lease")), 30, "a poll in progress")
        pid = int(holder.decode().split(":")[1])
        workers.pop(pid).kill()  # SIGKILL while it holds the lease: nothing released
        fake_pk.delay = 0
        member["name"] = "Sal"
        logged = await until(lambda: _updates(dep), 60, "the survivor to poll the rename")
        assert [r.data for r in logged] == [{"name": "Sal"}]
        [survivor] = workers.values()
        assert survivor.poll() is None  # the rename was polled by the survivor
    finally:
        for proc in workers.values():
            proc.terminate()
            proc.wait(30)
        await redis.aclose()
        await engine.dispose()


async def _updates(dep: Deployment) -> list[Any]:
    return [r for r in await dep.logged() if r.type == "UPDATE_MEMBER"]


async def test_api_systems_shows_mode_polling_and_budget(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    dep, creds = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll",
                                   server={"admin_token": "admin-0123456789abcdef"})
    t0 = time.time()
    await dep.poll(t0)
    async with AsyncTestClient(app=dep.app()) as client:
        answer = await client.get("/api/systems", headers={"Authorization": "Bearer admin-0123456789abcdef"})
    [home] = answer.json()
    assert home["name"] == "home" and home["mode"] == "poll" and home["polling"] == "poll cadence"
    assert home["last_poll"] is not None and home["last_dispatch"] is None and home["poll_budget"] == 1.0
    assert creds["api_token"] not in answer.text and creds["signing_token"] not in answer.text


async def test_a_revoked_api_token_invents_no_events_and_is_reported(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    """PluralKit answers a revoked token as if none was given: the owner's private data
    vanishes from every answer. That is no change of the system: no events, either way,
    and the token shows as rejected until it works again."""
    fake_system.system["pronouns"] = "they/them"
    fake_system.system["privacy"]["pronoun_privacy"] = "private"
    alex = fake_pk.add_member(fake_system, "Alex")
    alex["pronouns"], alex["privacy"]["pronoun_privacy"] = "she/her", "private"
    fake_pk.add_switch(fake_system, [alex["uuid"]])
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll",
                               server={"admin_token": "admin-0123456789abcdef"})
    t0 = time.time()
    assert await dep.poll(t0) == 0  # baseline with the owner's view

    good_token, fake_system.token = fake_system.token, "revoked-" + fake_system.token[8:]
    for step in range(1, 4):
        assert await dep.poll(t0 + 20 * step) == 0
    assert await dep.logged() == []
    async with AsyncTestClient(app=dep.app()) as client:
        answer = await client.get("/api/systems", headers={"Authorization": "Bearer admin-0123456789abcdef"})
        metrics = (await client.get("/metrics")).text
    [home] = answer.json()
    assert home["api_token"] == "rejected"
    assert good_token not in answer.text
    assert 'pkrelay_api_token_rejected{system="home"} 1.0' in metrics

    fake_system.token = good_token
    assert await dep.poll(t0 + 80) == 0  # the owner's view is back: nothing changed, nothing to report
    assert await dep.poll(t0 + 100) == 0
    assert await dep.logged() == []
    async with AsyncTestClient(app=dep.app()) as client:
        answer = await client.get("/api/systems", headers={"Authorization": "Bearer admin-0123456789abcdef"})
    assert answer.json()[0]["api_token"] == "ok"


async def _dispatch(dep: Deployment, creds: dict[str, str], event_type: str, entity_id: str | None,
                    data: Any) -> None:
    """A dispatch answered by the receiver and logged by a worker."""
    async with AsyncTestClient(app=dep.app()) as client:
        content = body(event_type, creds["signing_token"], creds["system_id"], entity_id, data)
        assert (await FakeDispatcher(client, "/dispatch").send(content)).status_code == 200
    await dep.work()


async def _poll_answered_stale(dep: Deployment, fake: FakePluralKit, suffix: str, now: float,
                               meanwhile: Callable[[], Awaitable[None]]) -> int:
    """A poll whose answer to `suffix` is taken as the API stands, then held while
    `meanwhile` changes the API and logs the dispatch that says so; then the poll
    goes on and compares."""
    pause = fake.pause(suffix)
    polling = asyncio.create_task(dep.poll(now))
    await until(lambda: pause.reached.is_set(), 30, f"the poll's {suffix} answer")
    try:
        await meanwhile()
    finally:
        pause.released.set()
    return await polling


async def test_a_poll_answer_older_than_a_dispatch_logged_meanwhile_is_no_event(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    """The order a sink saw: dispatch "58", dispatch "88", poll "58". A dispatch logged
    while the poll's answer was on its way is newer than that answer: the poll must not
    report the old value, while a change nobody dispatched (Sam's) is still found."""
    alex, sam = fake_pk.add_member(fake_system, "Alex"), fake_pk.add_member(fake_system, "Sam")
    dep, creds = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "auto")
    t0 = time.time()
    await dep.poll(t0)
    alex["name"] = "58"
    await _dispatch(dep, creds, "UPDATE_MEMBER", alex["uuid"], {"name": "58"})
    sam["name"] = "Sal"  # this dispatch was lost

    async def renamed_again() -> None:
        alex["name"] = "88"
        await _dispatch(dep, creds, "UPDATE_MEMBER", alex["uuid"], {"name": "88"})

    assert await _poll_answered_stale(dep, fake_pk, "/members", t0 + 130, renamed_again) == 1
    updates = [(r.source, r.entity_id, r.data) for r in await _updates(dep)]
    assert updates == [("dispatch", alex["uuid"], {"name": "58"}), ("dispatch", alex["uuid"], {"name": "88"}),
                       ("poll", sam["uuid"], {"name": "Sal"})]

    def member_lists() -> int:
        return sum(1 for j in fake_pk.journal if j.path.endswith("/members"))

    listed = member_lists()
    assert await dep.poll(t0 + 133) == 0  # Alex's check runs again soon, not in 100 s: nothing new
    assert member_lists() == listed + 1
    assert len(await _updates(dep)) == 3


async def test_a_switch_logged_while_the_poll_fetched_yields_no_phantom_switch_events(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    a, b = fake_pk.add_member(fake_system, "A"), fake_pk.add_member(fake_system, "B")
    fake_pk.add_switch(fake_system, [a["uuid"]], "2026-11-22T10:00:00.000000Z")
    dep, creds = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "auto")
    t0 = time.time()
    await dep.poll(t0)
    switched: dict[str, Any] = {}

    async def switch() -> None:  # after /fronters answered "A", while /switches is held
        switched.update(fake_pk.add_switch(fake_system, [b["uuid"]]))
        await _dispatch(dep, creds, "CREATE_SWITCH", switched["id"],
                        {"id": switched["id"], "timestamp": switched["timestamp"], "members": [b["uuid"]]})

    assert await _poll_answered_stale(dep, fake_pk, "/switches", t0 + 130, switch) == 0
    for later in (133, 136, 260, 390):
        assert await dep.poll(t0 + later) == 0
    rows = await dep.logged()
    assert [(r.source, r.type, r.entity_id) for r in rows] == [("dispatch", "CREATE_SWITCH", switched["id"])]
    engine = db.create_engine(dep.live().current.database_url)
    try:
        async with engine.connect() as conn:
            front = await state.get(conn, fake_system.uuid, state.Kind.FRONTERS, fake_system.uuid)
    finally:
        await engine.dispose()
    assert front is not None and front.data["id"] == switched["id"]  # the store was not set back to "A"


async def test_a_system_that_never_stops_dispatching_is_still_reconciled(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem
) -> None:
    """A dispatch lands during every poll: only what it wrote is left out, so the lost
    changes of everything else still come through at once."""
    chatty = fake_pk.add_member(fake_system, "Chatty")
    quiet = [fake_pk.add_member(fake_system, f"Q{i}") for i in range(3)]
    dep, creds = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "poll")
    t0 = time.time()
    await dep.poll(t0)
    for step, member in enumerate(quiet, start=1):
        member["description"] = f"lost {step}"  # no dispatch for these

        async def chatter(step: int = step) -> None:
            chatty["description"] = f"said {step}"
            await _dispatch(dep, creds, "UPDATE_MEMBER", chatty["uuid"], {"description": f"said {step}"})

        assert await _poll_answered_stale(dep, fake_pk, "/members", t0 + 10 * step, chatter) == 1
    polled = [r.data for r in await _updates(dep) if r.source == "poll"]
    assert polled == [{"description": f"lost {step}"} for step in (1, 2, 3)]


async def _many(tmp_path: Path, redis: EmbeddedRedis, fake: FakePluralKit, count: int, mode: str,
                **settings: Any) -> Deployment:
    """`count` systems of the fake API in `mode`, each with its own token."""
    systems = [fake.add_system(f"S{i}") for i in range(count)]
    return await deploy(tmp_path, redis, fake, [
        {"name": f"s{i}", "system_id": s.uuid, "api_token": s.token, "mode": mode, "signing_token": new_token()}
        for i, s in enumerate(systems)], **settings)


@asynccontextmanager
async def _worker(dep: Deployment) -> AsyncIterator[dict[str, Any]]:
    """A worker's job context (its Resources), kept across ticks as a running worker's is."""
    settings = worker_settings(dep.live(), dep.redis_url)
    redis = await create_pool(settings["redis_settings"])
    ctx: dict[str, Any] = {"redis": redis}
    await settings["on_startup"](ctx)
    try:
        yield ctx
    finally:
        await settings["on_shutdown"](ctx)
        await redis.aclose()


async def test_two_workers_never_poll_one_check_twice(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit
) -> None:
    """Two workers tick at the same moments over many systems: no check runs twice in
    one tick, nor again before its period (2 s for the most frequent) is near."""
    dep = await _many(tmp_path, redis_server, fake_pk, 30, "poll")
    t0 = time.time()
    ran: dict[tuple[str | None, str], list[int]] = {}
    async with _worker(dep) as one, _worker(dep) as two:
        for second in range(13):
            fake_pk.journal.clear()
            await asyncio.gather(poll_tick(one, t0 + second), poll_tick(two, t0 + second))
            calls = Counter((j.key, j.path.rsplit("/", 1)[-1]) for j in fake_pk.journal)
            assert not calls or max(calls.values()) == 1, (second, calls.most_common(3))
            if second == 0:
                assert len(calls) == 30 * 6  # every system's baseline, once
            for check in calls:
                ran.setdefault(check, []).append(second)
    gaps = [b - a for seconds in ran.values() for a, b in itertools.pairwise(seconds)]
    assert gaps and min(gaps) >= 2
    assert sum(len(seconds) for seconds in ran.values()) <= 30 * 13 * 1.0 + 30 * 6  # within the budget


async def test_the_checks_of_many_systems_are_spread_over_their_period(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit
) -> None:
    """After the first poll (the baseline, at once), the checks of 40 `auto` systems do
    not come due in the same second again: each kind's are spread over its period, about
    as evenly as a hash of the systems' names allows."""
    count = 40
    dep = await _many(tmp_path, redis_server, fake_pk, count, "auto")
    t0 = time.time()
    runs: Counter[tuple[str, int]] = Counter()
    async with _worker(dep) as ctx:
        await poll_tick(ctx, t0)
        assert len(fake_pk.journal) == count * 6
        for second in range(1, 101):
            before = len(fake_pk.journal)
            await poll_tick(ctx, t0 + second)
            runs.update((j.path.rsplit("/", 1)[-1], second) for j in fake_pk.journal[before:])
    periods = {"fronters": 60, "switches": 100, "members": 100}
    for check, period in periods.items():
        per_second = [n for (kind, _), n in runs.items() if kind == check]
        assert sum(per_second) >= count  # each ran again within its period
        assert max(per_second) <= 2 * count / period + 3, (check, sorted(per_second)[-5:])  # not all 40 at once


async def test_one_worker_runs_one_tick_at_a_time(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit
) -> None:
    """A tick still at work (a slow API) is not joined by the next: that one returns at
    once and polls nothing."""
    dep = await _many(tmp_path, redis_server, fake_pk, 12, "poll")
    fake_pk.delay = 0.1
    async with _worker(dep) as ctx:
        first = asyncio.create_task(poll_tick(ctx, time.time()))
        await until(lambda: fake_pk.journal, 30, "the first tick's first call")
        started = time.monotonic()
        assert await poll_tick(ctx, time.time() + 1) == 0
        assert time.monotonic() - started < 0.1
        await first
    assert len(fake_pk.journal) == 12 * 6  # the first tick polled every system, once


async def test_api_systems_reads_redis_in_one_round_trip(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit
) -> None:
    """200 systems: `/api/systems` costs one Redis round trip, not several per system."""
    dep = await _many(tmp_path, redis_server, fake_pk, 200, "auto")
    engine = db.create_engine(dep.live().current.database_url)
    redis = Redis.from_url(redis_server.url)
    trips = 0
    real = redis.connection_pool.get_connection

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal trips
        trips += 1
        return await real(*args, **kwargs)

    redis.connection_pool.get_connection = counted  # type: ignore[method-assign]
    try:
        answer = await status.systems(dep.live().current, engine, redis)
    finally:
        await redis.aclose()
        await engine.dispose()
    assert len(answer) == 200 and all(a["api_token"] == "ok" for a in answer)
    assert trips == 1
