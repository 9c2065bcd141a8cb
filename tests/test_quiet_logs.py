"""The default log says what changed, once: not what never happened, nor each retry."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from pkrelay import logs
from pkrelay.redis_server import EmbeddedRedis
from pkrelay.store.deliveries import RetryPolicy
from tests.deployment import deploy, webhook_sink
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.sink_server import SinkServer
from tests.test_delivery import _dispatch, _update
from tests.test_poll import _deployment


def _said(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


async def test_a_first_start_in_auto_does_not_say_pluralkit_stopped_sending(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem,
    caplog: pytest.LogCaptureFixture,
) -> None:
    public_url = "https://relay.example.org/dispatch"
    fake_system.system["webhook_url"] = None  # never registered
    dep, _ = await _deployment(tmp_path, redis_server, fake_pk, fake_system, "auto",
                               server={"public_url": public_url})
    caplog.set_level(logging.INFO)
    t0 = time.time()
    await dep.poll(t0)
    assert not _said(caplog, logging.WARNING, "no longer sends")
    assert _said(caplog, logging.INFO, "system home: PluralKit does not send webhooks to")
    fake_system.system["webhook_url"] = f"{public_url}/home"
    await dep.poll(t0 + 200)
    fake_system.system["webhook_url"] = None  # registered, then cleared: that is news
    await dep.poll(t0 + 400)
    assert len(_said(caplog, logging.WARNING, "PluralKit no longer sends webhooks")) == 1


async def test_a_dead_sink_warns_once_when_it_fails_and_says_once_when_it_recovers(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, system_creds: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = SinkServer(respond=lambda n: 500 if n <= 8 else 200)
    sink.start()
    try:
        dep = await deploy(tmp_path, redis_server, fake_pk, [system_creds],
                           sinks=[webhook_sink(sink.url, name="down")])
        caplog.set_level(logging.INFO)
        await _dispatch(dep, system_creds, *(_update(system_creds, f"n{i}") for i in range(3)))
        await dep.work(RetryPolicy(base=0.02, cap=0.05, window=3600))
    finally:
        sink.stop()
    assert len(sink.received) > 8  # many failed attempts...
    assert len(_said(caplog, logging.WARNING, "")) == 1  # ...one warning
    assert _said(caplog, logging.WARNING, "sink down is failing: delivery of")
    assert len(_said(caplog, logging.INFO, "sink down recovered")) == 1


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_skipped_cron_slot_is_not_in_the_default_log() -> None:
    arq_log, kept = logging.getLogger("arq.worker"), _Kept()
    arq_log.addHandler(kept)
    try:
        logs.setup([], "test", "info")
        arq_log.warning("%6.2fs ! %s max retries %d exceeded", 1.5, "cron:poll_tick", 1)
        arq_log.warning("%6.2fs ! %s max retries %d exceeded", 1.5, "abc:deliver", 200)
        assert kept.lines == ["  1.50s ! abc:deliver max retries 200 exceeded"]
        logs.setup([], "test", "debug")
        arq_log.warning("%6.2fs ! %s max retries %d exceeded", 1.5, "cron:poll_tick", 1)
        assert "cron:poll_tick" in kept.lines[-1]
    finally:
        arq_log.removeHandler(kept)
        logs.setup([], "test", "info")
