"""Discord sinks: a channel webhook gets `{"content", "embeds"}`, not our envelope.

A switch says who fronts now, in an embed with the first fronter's colour and avatar;
any other event is one line saying what changed. A `template` replaces the default
(its output must be Discord's JSON). Discord answers 204; its 429 names the wait in
the body (`retry_after`, seconds) and in `Retry-After`, which the sink's next attempt
honours like any Retry-After (pkrelay/store/sinks.py). Mentions are never parsed: a
member named `@everyone` pings nobody.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec

from pkrelay import shaping
from pkrelay.config import DiscordSink
from workers.proxy import Proxies
from workers.sinks import DeliveryFailed, Outgoing
from workers.webhook import ANSWER_BYTES, retry_after

SWITCHES = {"CREATE_SWITCH", "UPDATE_SWITCH"}
LIMIT = 2000  # characters of `content`


def _name(entity: Any) -> str:
    if not isinstance(entity, Mapping):
        return str(entity) if entity else ""
    return str(entity.get("display_name") or entity.get("name") or entity.get("id") or entity.get("uuid") or "")


def _colour(value: Any) -> int | None:
    try:
        return int(value, 16) if isinstance(value, str) and len(value) == 6 else None
    except ValueError:
        return None


def message(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The default message for this envelope."""
    kind = str(envelope.get("type", ""))
    entity = envelope.get("entity") or {}
    system = envelope.get("system") or "the system"
    if kind in SWITCHES and isinstance(entity, Mapping):
        members = [m for m in entity.get("members") or [] if m]
        names = [_name(m) for m in members]
        text = f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} fronting" if names else "Nobody is fronting"
        embed: dict[str, Any] = {"title": f"{system}: switch", "description": text}
        if envelope.get("received_at"):
            embed["timestamp"] = envelope["received_at"]
        first = members[0] if members and isinstance(members[0], Mapping) else {}
        if (colour := _colour(first.get("color"))) is not None:
            embed["color"] = colour
        if isinstance(first.get("avatar_url"), str) and first["avatar_url"].startswith("https://"):
            embed["thumbnail"] = {"url": first["avatar_url"]}
        return {"content": f"{text} now.", "embeds": [embed], "allowed_mentions": {"parse": []}}
    what = kind.replace("_", " ").lower().capitalize() or "An event"
    name = _name(entity) or _name(envelope.get("data"))
    data = envelope.get("data")
    changed = sorted(k for k in data if k not in ("id", "uuid")) if isinstance(data, Mapping) else []
    line = f"{system}: {what}" + (f" {name}" if name else "") + (f" ({', '.join(changed)})" if changed else "")
    return {"content": line[:LIMIT], "allowed_mentions": {"parse": []}}


class DiscordSender:
    def __init__(self, sink: DiscordSink, http: aiohttp.ClientSession, proxies: Proxies) -> None:
        self.sink = sink
        self.http = http
        self.route = proxies.route(sink.url)

    async def send(self, outgoing: Outgoing) -> int:
        """POST once; 2xx (Discord: 204) is success."""
        sink = self.sink
        try:
            body = (shaping.render(sink.template, outgoing.envelope) if sink.template
                    else msgspec.json.encode(message(outgoing.envelope)))
        except shaping.RenderError as exc:
            raise DeliveryFailed(str(exc)) from None
        sent = {name.lower(): value.reveal() for name, value in sink.headers.items()}
        sent |= {"content-type": sink.content_type, "user-agent": "pkrelay"}
        try:
            async with self.http.post(sink.url, data=body, allow_redirects=False, proxy=self.route.proxy,
                                      proxy_headers=self.route.proxy_headers,
                                      headers=sent | self.route.headers) as response:
                answer = await response.content.read(ANSWER_BYTES)
                status = response.status
                header = response.headers.get("retry-after")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if 200 <= status < 300:
            return status
        if status == 429:
            wait = _retry_after(answer)
            wait = max(wait, retry_after(header) or 0.0) if wait is not None else retry_after(header)
            raise DeliveryFailed("HTTP 429 (Discord rate limit)", status, wait)
        raise DeliveryFailed(f"HTTP {status}", status, retry_after(header) if status == 503 else None)


def _retry_after(answer: bytes) -> float | None:
    """Discord's 429 body: {"message", "retry_after": seconds, "global"}."""
    try:
        value = json.loads(answer).get("retry_after")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None
