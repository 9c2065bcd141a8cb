"""The dashboard in a real browser: the distribution's Chromium driven by Playwright."""

from __future__ import annotations

import base64
import os
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import webhook_sink
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body, new_token
from tests.sink_server import SinkServer
from tests.test_stream import ADMIN, Served, serve

playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# `PKRELAY_SCREENSHOTS=1 pytest tests/test_dashboard.py` refreshes the docs' screenshots;
# otherwise they go to the test's temporary directory, so a test run changes no file.
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"
FAST = RetryPolicy(base=0.05, cap=0.2, window=3600)
expect = playwright_api.expect


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh Chromium profile per test."""
    async with playwright_api.async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1100, "height": 760})
        yield context
        await context.close()


@pytest.fixture
def sink() -> Any:
    """A webhook endpoint that fails (500) until `healthy` is set."""
    healthy = threading.Event()
    server = SinkServer(respond=lambda n: 200 if healthy.is_set() else 500)
    server.start()
    server.healthy = healthy  # type: ignore[attr-defined]
    yield server
    server.stop()


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


async def _login(page: Any, served: Served, token: str = ADMIN, path: str = "/") -> None:
    await page.goto(served.url + path)
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Log in").click()


def _csp_violations(page: Any) -> list[str]:
    """What the browser refuses under the pages' Content-Security-Policy (it says so on
    the console, and in a securitypolicyviolation event), as it happens."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: seen.append(str(e)))
    return seen


async def _switch(served: Served, fake: FakePluralKit, system: FakeSystem, names: list[str]) -> None:
    colours = ("ff6a00", "2f80ed")
    known = {m["name"]: m for m in system.members.values()}
    members = [known.get(name) or fake.add_member(system, name, color=colour)
               for name, colour in zip(names, colours, strict=False)]
    switch = fake.add_switch(system, [m["uuid"] for m in members])
    await served.dispatch(body("CREATE_SWITCH", served.creds["signing_token"], system.uuid, switch["id"],
                               {"id": switch["id"], "timestamp": switch["timestamp"],
                                "members": [m["uuid"] for m in members]}))
    await served.dep.work(FAST)


async def test_login_then_a_dispatched_switch_appears_live_and_opens_to_its_envelope(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, sink: Any, browser: Any,
) -> None:
    sink.healthy.set()
    secret = _secret()
    async with serve(tmp_path, redis_server, system_creds, fake_pk, sinks=[webhook_sink(sink.url, secret)]) as served:
        page = await browser.new_page()
        violations = _csp_violations(page)
        await _login(page, served, token="not-the-token")
        await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
        await page.get_by_label("Admin token").fill(ADMIN)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        cookie = next(c for c in await browser.cookies() if c["name"] == "pkrelay_session")
        assert cookie["httpOnly"] and not cookie["secure"]  # plain HTTP on the LAN

        await _switch(served, fake_pk, fake_system, ["Ash", "Bo"])  # a first switch, so the next has `previous`
        await page.goto(served.url + "/events")
        await expect(page.locator("#live")).to_contain_text("Live")
        rows = page.locator("#events tbody tr")
        await expect(rows).to_have_count(1)
        await _switch(served, fake_pk, fake_system, ["Cy", "Dee"])  # no reload from here on
        await expect(rows).to_have_count(2)
        newest = rows.first
        await expect(newest).to_contain_text("CREATE_SWITCH")
        await expect(newest).to_contain_text("home")
        event_id = await newest.get_attribute("id")
        await newest.get_by_role("link", name="CREATE_SWITCH").click()

        await expect(page.get_by_role("heading", name="CREATE_SWITCH")).to_be_visible()
        assert event_id in await page.locator(".facts").inner_text()
        changed = page.locator("table.diff tr.changed")
        await expect(changed.filter(has_text="members")).to_have_count(1)
        await expect(changed.filter(has_text="members")).to_contain_text("Dee")
        await expect(page.locator("pre.envelope")).to_contain_text('"previous"')
        await expect(page.locator(".card", has_text="webhook to 127.0.0.1")).to_contain_text("delivered")
        await expect(page.locator(".card", has_text="webhook to 127.0.0.1").locator("tbody tr")).to_contain_text("200")

        await page.goto(served.url + "/")
        await expect(page.locator(".fronters")).to_contain_text("Cy")
        await expect(page.locator(".fronters")).to_contain_text("Dee")
        text = await page.content()
        for secret_value in (ADMIN, served.creds["signing_token"], served.creds["api_token"], secret):
            assert secret_value not in text
        shots = DOCS_IMG if os.environ.get("PKRELAY_SCREENSHOTS") == "1" else tmp_path
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shots / "overview.png"), full_page=True)

        # The second edit of a member (the first stored it): only what changed is highlighted.
        cy = next(m for m in fake_system.members.values() if m["name"] == "Cy")
        for name in ("Cyan", "Cyd"):
            cy["name"] = name
            await served.dispatch(body("UPDATE_MEMBER", served.creds["signing_token"], fake_system.uuid,
                                       cy["uuid"], {"name": name}))
            await served.dep.work(FAST)
        await page.goto(served.url + "/events")
        await page.get_by_role("link", name="UPDATE_MEMBER").first.click()
        assert await page.locator("table.diff tr.changed th").all_inner_texts() == ["name changed"]
        await expect(page.locator("table.diff tr", has_text="pronouns")).not_to_have_class("changed")
        await page.screenshot(path=str(shots / "event.png"))
        await page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert violations == []  # the live view, the colours, the avatars: all within the policy


async def test_a_dead_letter_replayed_from_the_dashboard_is_delivered(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    sink: Any, browser: Any,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk, sinks=[webhook_sink(sink.url)]) as served:
        await served.dispatch(served.update("Sam"))
        await served.dep.work(RetryPolicy(base=0.02, cap=0.05, window=0.3))
        [dead] = await served.dep.logged()
        failed = len(sink.received)
        page = await browser.new_page()
        violations = _csp_violations(page)
        await _login(page, served, path="/deliveries")
        await expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()
        row = page.locator("tr", has_text=dead.id)
        await expect(row).to_contain_text("HTTP 500")

        sink.healthy.set()
        await row.get_by_role("button", name="Replay").click()
        await expect(page.get_by_role("status")).to_have_text("1 delivery queued again.")
        await served.dep.work(FAST)
        assert len(sink.received) == failed + 1
        assert msgspec.json.decode(sink.received[-1].body)["id"] == dead.id
        await page.reload()
        await expect(page.locator("tr", has_text=dead.id)).to_have_count(0)
        await page.goto(f"{served.url}/events/{dead.id}")
        await expect(page.locator(".card", has_text="webhook to").locator(".pill")).to_have_text("delivered")

        await page.goto(served.url + "/deliveries")
        await page.get_by_role("button", name="Send a test event").click()
        await expect(page.get_by_role("status")).to_contain_text("Test event")
        await served.dep.work(FAST)
        test_event = msgspec.json.decode(sink.received[-1].body)
        assert test_event["type"] == "PKRELAY_TEST" and test_event["source"] == "test"
        assert violations == []

        # Logging out ends the session on the server: the cookie, put back, is refused.
        [cookie] = [c for c in await browser.cookies() if c["name"] == "pkrelay_session"]
        await page.get_by_role("button", name="Log out").click()
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        await browser.add_cookies([cookie])
        await page.goto(served.url + "/deliveries")
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()


async def test_an_expired_session_goes_back_to_the_login_form(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    browser: Any,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk) as served:
        # Long enough for the login's redirect to land on a loaded machine (a 1 s session
        # could end first), short enough to wait out below.
        served.app.state.dashboard.session_seconds = 5
        page = await browser.new_page()
        await _login(page, served, path="/connect")
        await expect(page.get_by_role("heading", name="Connect a system")).to_be_visible()
        [cookie] = [c for c in await browser.cookies() if c["name"] == "pkrelay_session"]
        expires = int(cookie["value"].split(".")[0])
        # Off the page: it reloads itself every 5 s (waiting for PINGs), and a reload in
        # flight would abort the navigation below.
        await page.goto("about:blank")
        while time.time() <= expires:  # the session's own end, not a guess at a race
            await page.wait_for_timeout(100)
        # Kept by the browser past its end, as a copied cookie would be: the server refuses it.
        await browser.add_cookies([{**cookie, "expires": time.time() + 3600}])
        await page.goto(served.url + "/connect")
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        served.app.state.dashboard.session_seconds = 3600
        await page.get_by_label("Admin token").fill(ADMIN)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("heading", name="Connect a system")).to_be_visible()  # back where it was


async def test_actions_without_their_csrf_token_are_refused(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    sink: Any, browser: Any,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk, sinks=[webhook_sink(sink.url)]) as served:
        page = await browser.new_page()
        await _login(page, served, path="/deliveries")
        key = await page.locator("input[name=sink]").first.get_attribute("value")
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        for form in ({"sink": key}, {"sink": key, "csrf": "forged"}):  # the session cookie alone is not enough
            for action in ("/deliveries/test", "/deliveries/replay", "/logout"):
                answer = await page.request.post(served.url + action, form=form, max_redirects=0)
                assert answer.status == 403, action
        assert (await served.dep.logged()) == []  # nothing was sent
        answer = await page.request.post(served.url + "/deliveries/test", form={"sink": key, "csrf": csrf},
                                         max_redirects=0)
        assert answer.status == 303
        [logged] = await served.dep.logged()
        assert logged.type == "PKRELAY_TEST"


async def test_the_connect_page_shows_each_systems_command_and_its_verified_pings(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    browser: Any,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk,
                     server={"public_url": "https://relay.example.org/dispatch"}) as served:
        page = await browser.new_page()
        await _login(page, served, path="/connect")
        # public_url is the full URL of the dispatch path: the system's own is below it, once
        await expect(page.locator("pre.command")).to_have_text("pk;system webhook https://relay.example.org/dispatch/home")
        card = page.locator(".card", has_text="home")
        await expect(card).to_contain_text("No PING with this system's token")
        async with httpx.AsyncClient() as client:  # the owner confirmed before pasting the token
            dispatcher = FakeDispatcher(client, served.url + "/dispatch/home")
            assert not await dispatcher.register(new_token(), served.creds["system_id"])
            assert await dispatcher.register(served.creds["signing_token"], served.creds["system_id"])
        await expect(card).to_contain_text("Passed", timeout=15000)  # the page refreshes itself
        await expect(card.locator("li")).to_have_count(1)  # the wrong-token PINGs are not listed
        async with httpx.AsyncClient() as client:  # public_url is https: the cookie is Secure
            answer = await client.post(served.url + "/login", data={"token": ADMIN})
            assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()


async def test_the_dashboard_is_off_without_an_admin_token(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk, admin="") as served:
        async with httpx.AsyncClient() as client:
            for path in ("/", "/login", "/events", "/static/dashboard.css"):
                assert (await client.get(served.url + path)).status_code == 404, path
            assert (await client.post(served.url + "/login", data={"token": ""})).status_code == 404


async def test_the_overview_shows_who_fronts_since_when_and_the_last_switches(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, browser: Any,
) -> None:
    async with serve(tmp_path, redis_server, system_creds, fake_pk) as served:
        page = await browser.new_page()
        violations = _csp_violations(page)
        await _login(page, served)
        await _switch(served, fake_pk, fake_system, ["Ash", "Bo"])
        await _switch(served, fake_pk, fake_system, ["Cy", "Bo"])
        await page.goto(served.url + "/")
        card = page.locator(".card.system", has_text="home")
        await expect(card.locator(".front-label")).to_contain_text("Fronting since")
        since = card.locator(".front-label time")
        assert (await since.get_attribute("datetime") or "").endswith("Z")  # UTC in the markup...
        await expect(since).to_have_text(re.compile(r"(just now|ago) \(.*\)"))  # ...local time on the page
        await expect(card.locator(".members .name")).to_have_text(["Cy", "Bo"])
        newest = card.locator(".switches li").first
        await expect(newest.locator(".came")).to_have_text("in: Cy")
        await expect(newest.locator(".left")).to_have_text("out: Ash")
        await expect(card.locator(".switches li").nth(1).locator(".came")).to_have_text("in: Ash, Bo")
        assert violations == []
