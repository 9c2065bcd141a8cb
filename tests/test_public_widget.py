"""The public front widget in Chromium: live updates, no CSP violations, framed anywhere.

`PKRELAY_SCREENSHOTS=1 pytest tests/test_public_widget.py` refreshes docs/img/widget-*.png.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pkrelay.redis_server import EmbeddedRedis
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.test_dashboard import CHROMIUM, DOCS_IMG, _csp_violations, browser, expect
from tests.test_public_front import member, serve_public, switch, system_changed

__all__ = ["browser"]  # the fixture
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")


@contextmanager
def embedder(page: str) -> Iterator[str]:
    """Another site on loopback, serving `page` at /."""
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page.encode())

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _avatar(letter: str, start: str, end: str) -> str:
    """An avatar as PluralKit would link one, inline (the tests reach no CDN)."""
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><defs><linearGradient id="g" x1="0" '
           f'y1="0" x2="1" y2="1"><stop offset="0" stop-color="#{start}"/><stop offset="1" stop-color="#{end}"/>'
           f'</linearGradient></defs><rect width="64" height="64" fill="url(#g)"/><text x="32" y="42" '
           f'font-family="sans-serif" font-size="28" font-weight="700" text-anchor="middle" fill="#fff">{letter}'
           f'</text></svg>')
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


async def test_the_widget_updates_live_without_csp_violations_and_may_be_framed_anywhere(
    tmp_path: Path, redis_server: EmbeddedRedis, system_creds: dict[str, str], fake_pk: FakePluralKit,
    fake_system: FakeSystem, browser: Any,
) -> None:
    fake_system.system.update(name="The Lanterns", tag="~lantern", color="e8a33d",
                              avatar_url=_avatar("L", "e8a33d", "b5541c"))
    ash = member(fake_pk, fake_system, "Ash", pronouns="she/her", color="ff6a00",
                 avatar_url=_avatar("A", "ff9a3c", "ff6a00"))
    bo = member(fake_pk, fake_system, "Bo", display_name="Bobbie", pronouns="they/them", color="2f80ed")
    cy = member(fake_pk, fake_system, "Cyan", pronouns="xe/xem", color="9b51e0",
                avatar_url=_avatar("C", "c084fc", "7e22ce"))
    hidden = member(fake_pk, fake_system, "Hidden-Member", privacy={"visibility": "private"})
    async with serve_public(tmp_path, redis_server, fake_pk, system_creds) as served:
        await system_changed(served, fake_system)
        await switch(served, fake_pk, fake_system, [ash])
        page = await browser.new_page()
        await page.set_viewport_size({"width": 390, "height": 240})
        violations = _csp_violations(page)
        answer = await page.goto(served.url + "/public/home/widget")
        assert answer is not None and "frame-ancestors *" in answer.headers["content-security-policy"]
        assert "x-frame-options" not in answer.headers
        fronters = page.locator(".fronter")
        await expect(fronters).to_have_count(1)
        await expect(fronters.first).to_contain_text("Ash")
        await expect(fronters.first).to_contain_text("she/her")
        await expect(page.locator("#status")).to_have_text("Live")
        await expect(page.locator(".system-name")).to_have_text("The Lanterns")
        # The member's colour, set through the CSSOM (no inline style in the markup).
        assert await fronters.first.evaluate("e => getComputedStyle(e).borderLeftColor") == "rgb(255, 106, 0)"

        await switch(served, fake_pk, fake_system, [ash, bo, hidden, cy])  # no reload from here on
        await expect(fronters).to_have_count(3)
        await expect(fronters).to_contain_text(["Ash", "Bobbie", "Cyan"])
        assert "Hidden-Member" not in await page.content()
        await expect(fronters.nth(1).locator(".avatar")).to_have_text("B")  # no avatar: an initial

        framing = await browser.new_page()
        frame_violations = _csp_violations(framing)
        with embedder(f'<iframe src="{served.url}/public/home/widget" width="400" height="260"></iframe>') as site:
            await framing.goto(site)  # another origin (a site on another port) frames the widget
            await expect(framing.frame_locator("iframe").locator(".fronter")).to_have_count(3)

        shots = DOCS_IMG if os.environ.get("PKRELAY_SCREENSHOTS") == "1" else tmp_path
        for scheme in ("light", "dark"):
            await page.emulate_media(color_scheme=scheme)
            for width in (390, 600):
                await page.set_viewport_size({"width": width, "height": 200})
                await page.screenshot(path=str(shots / f"widget-{scheme}-{width}.png"), full_page=True)
        assert violations == [] and frame_violations == []
