"""A pytest plugin: no configured secret in any log line, answer or captured output.

For every test it records each log record the test process creates, the body of
each HTTP answer an httpx client (the test clients included) reads in full, and the
output of each `subprocess.run` that captured it; at the end it looks for every secret
of every config the test loaded (signing and API tokens, sink secrets, the admin
token) and of the `system_creds` fixture. The redaction filter is the second line of
defence; this checks the first: code never logs or answers a secret. A test that
logs one on purpose (to test the filter) says so with `@pytest.mark.shows_secrets`.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pkrelay import config

_seen: list[Any] = []  # log records, bytes and str, as they came
_secrets: set[str] = set()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shows_secrets: the test shows a secret on purpose; not scanned")
    _install()


def _install() -> None:
    make_record = logging.getLogRecordFactory()

    def recording(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _seen.append(record)
        return record

    logging.setLogRecordFactory(recording)

    load = config.load

    def loading(*args: Any, **kwargs: Any) -> config.Settings:
        settings = load(*args, **kwargs)
        _secrets.update(settings.secrets())
        return settings

    config.load = loading  # type: ignore[assignment]

    run = subprocess.run

    def running(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        done = run(*args, **kwargs)
        _seen.extend(x for x in (done.stdout, done.stderr) if x)
        return done

    subprocess.run = running  # type: ignore[assignment]

    for client in (httpx.Client, httpx.AsyncClient):
        _record_answers(client)


def _record_answers(client: type) -> None:
    send = client.send
    if client is httpx.AsyncClient:
        async def asending(self: Any, request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
            response = await send(self, request, *args, **kwargs)
            if not kwargs.get("stream"):
                _seen.append(response.content)
            return response

        client.send = asending  # type: ignore[attr-defined]
    else:
        def sending(self: Any, request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
            response = send(self, request, *args, **kwargs)
            if not kwargs.get("stream"):
                _seen.append(response.content)
            return response

        client.send = sending  # type: ignore[attr-defined]


def _text(item: Any) -> str:
    if isinstance(item, logging.LogRecord):
        try:
            message = item.getMessage()
        except Exception:  # a broken format string is logging's to report
            message = str(item.msg)
        return message + (item.exc_text or "")
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return str(item)


@pytest.fixture(autouse=True)
def no_secret_shown(request: pytest.FixtureRequest) -> Iterator[None]:
    _seen.clear()
    _secrets.clear()
    yield
    creds = request.node.funcargs.get("system_creds")
    if isinstance(creds, dict):
        _secrets.update(v for k, v in creds.items() if k.endswith("_token") and v)
    if request.node.get_closest_marker("shows_secrets") or not _secrets:
        return
    secrets = [s for s in _secrets if len(s) >= 8]  # shorter ones are no real tokens
    for item in _seen:
        text = _text(item)
        shown = [s for s in secrets if s in text]
        if shown:
            pytest.fail(f"a secret ({shown[0][:4]}…) appears in: {text[:300]!r}", pytrace=False)
