"""`pkrelay check`, the sinks: can each one be reached, and does its config name what exists?

Harmless by design: a check never delivers anything. An MQTT sink is connected to
(and so authenticated) and disconnected, publishing nothing; a webhook sink gets a TCP
connection (and the TLS handshake for https) but no HTTP request, since any request to
a Home Assistant webhook, say, may fire an automation. `pkrelay test-event SINK` sends
a real event when that is wanted.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import aiomqtt

from pkrelay.config import MqttSink, Settings, ShapedSink, Sink
from pkrelay.labels import sink_label

TIMEOUT_S = 5.0
Report = Callable[..., None]


def _address(sink: Sink) -> str:
    """host:port, never the rest of the URL (a path or user info can hold a secret)."""
    url = urlsplit(sink.url)
    default = {"https": 443, "http": 80, "mqtts": 8883}.get(url.scheme, 1883)
    return f"{url.hostname or '127.0.0.1'}:{url.port or default}"


async def _reach_webhook(sink: ShapedSink) -> str:
    url = urlsplit(sink.url)
    tls = ssl.create_default_context() if url.scheme == "https" else None
    host, port = url.hostname or "", url.port or (443 if tls else 80)
    async with asyncio.timeout(TIMEOUT_S):
        _, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return f"{host}:{port} accepts connections" + (" (TLS verified)" if tls else "") + "; nothing was sent"


async def _reach_mqtt(sink: MqttSink) -> str:
    url = urlsplit(sink.url)
    tls = ssl.create_default_context() if url.scheme == "mqtts" else None
    host, port = url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883)
    async with asyncio.timeout(TIMEOUT_S), aiomqtt.Client(host, port, username=url.username, password=url.password,
                                                          tls_context=tls, timeout=TIMEOUT_S):
        pass
    return f"broker {host}:{port} accepted the connection" + (" and its credentials" if url.username else "")


async def _reach(sink: Sink) -> str:
    return await (_reach_mqtt(sink) if isinstance(sink, MqttSink) else _reach_webhook(sink))


def _members_named(sink: MqttSink, known: dict[str, set[str]], complete: set[str]) -> tuple[bool | None, str] | None:
    """Whether each name in `members` is a member of a system the sink covers."""
    if sink.members == "all" or not sink.members:
        return None
    covered = [name for name in known if sink.systems is None or name in sink.systems]
    if not covered:
        return None
    everyone = set().union(*(known[name] for name in covered))
    unknown = [m for m in sink.members if m not in everyone]
    if not unknown:
        return True, f"members: {len(sink.members)} named, each a member"
    # Without an api_token a private member is not listed: a warning then, not a failure.
    sure = all(name in complete for name in covered)
    detail = f"members names no member {', '.join(repr(m) for m in unknown)} of {', '.join(covered)}"
    return (False, detail) if sure else (None, f"{detail} (public members only: no api_token)")


async def check_sinks(settings: Settings, report: Report, known: dict[str, set[str]],
                      complete: Iterable[str] = ()) -> None:
    """One line per sink: reached or not (the reason), and its `members` naming real members.
    `known`: each system's member names, display names, ids and UUIDs, as far as the API
    showed them; `complete`: the systems whose list is whole (read with an api_token)."""
    results = await asyncio.gather(*(_reach(sink) for sink in settings.sinks), return_exceptions=True)
    for sink, result in zip(settings.sinks, results, strict=True):
        what = f"sink {sink_label(settings, sink)} ({sink.__struct_config__.tag})"
        if isinstance(result, BaseException):
            reason = "no answer within 5 s" if isinstance(result, TimeoutError) else \
                f"{type(result).__name__}: {result}"
            report(False, what, f"cannot reach {_address(sink)}: {reason}")
        else:
            report(True, what, result)
        if isinstance(sink, MqttSink):
            named = _members_named(sink, known, set(complete))
            if named is not None:
                report(named[0], what, named[1])
