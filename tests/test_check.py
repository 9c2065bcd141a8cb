"""`pkrelay check`: a clear report and an exit code, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pkrelay.redis_server import EmbeddedRedis, free_port
from tests.deployment import webhook_sink, write_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.sink_server import SinkServer


def _check(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
    return subprocess.run([sys.executable, "-m", "pkrelay", "check", "--config", str(cfg)], capture_output=True,
                          text=True, env=env, timeout=60)


def test_check_passes_and_reports_each_system(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem,
    system_creds: dict[str, str],
) -> None:
    public = {"name": "public", "system_id": fake_pk.add_system("Other").uuid, "mode": "poll"}
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "systems": [system_creds, public], "pluralkit": {"api_base_url": fake_pk.base_url},
        "redis": {"url": redis_server.url}, "server": {"public_url": "https://relay.example.org/dispatch"}})
    done = _check(cfg)
    assert done.returncode == 0, done.stdout
    assert f"token of system {fake_system.system['id']}" in done.stdout
    assert "no api_token: public data only" in done.stdout
    assert "PluralKit does not send them to https://relay.example.org/dispatch/home; polling at the poll cadence" \
        in done.stdout
    assert "all checks passed" in done.stdout
    assert system_creds["api_token"] not in done.stdout and system_creds["signing_token"] not in done.stdout


def test_check_passes_a_previous_release_config_and_shows_its_removed_key(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, system_creds: dict[str, str],
) -> None:
    # The text itself: the warning names the removed key's line.
    cfg = tmp_path / "pkrelay.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n\n[redis]\nurl = "{redis_server.url}"\n\n'
                   f'[pluralkit]\napi_base_url = "{fake_pk.base_url}"\nmessage_rate = 10\n\n[[systems]]\n'
                   + "".join(f'{key} = "{value}"\n' for key, value in system_creds.items()))
    done = _check(cfg)
    assert done.returncode == 0, done.stdout
    assert "all checks passed" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "`pluralkit.message_rate` (line 8) is no longer used and is ignored" in warnings[0]


def test_check_fails_clearly(tmp_path: Path, fake_pk: FakePluralKit, system_creds: dict[str, str]) -> None:
    wrong = {**system_creds, "api_token": "not-a-valid-token"}
    cfg = write_config(tmp_path / "pkrelay.toml", {"systems": [wrong], "pluralkit": {"api_base_url": fake_pk.base_url},
                                                   "redis": {"url": "redis://127.0.0.1:9/0"}})
    done = _check(cfg)
    assert done.returncode == 1
    assert "FAIL redis" in done.stdout and "FAIL system home: API" in done.stdout and "401" in done.stdout
    assert "not-a-valid-token" not in done.stdout
    (tmp_path / "bad.toml").write_text("[server]\nprot = 1\n")  # raw TOML: the check names the key's line
    bad = _check(tmp_path / "bad.toml")
    assert bad.returncode == 1 and "server.prot" in bad.stdout and "line 2" in bad.stdout


def test_check_says_an_empty_api_token_is_not_set(tmp_path: Path, fake_pk: FakePluralKit) -> None:
    cfg = write_config(tmp_path / "pkrelay.toml", {
        "systems": [{"name": "home", "api_token": "env:PK_API_TOKEN", "mode": "poll"}],
        "pluralkit": {"api_base_url": fake_pk.base_url}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
    done = subprocess.run([sys.executable, "-m", "pkrelay", "check", "--config", str(cfg)], capture_output=True,
                          text=True, env={**env, "PK_API_TOKEN": ""}, timeout=60)
    assert done.returncode == 1
    assert "FAIL system home: api_token is not set and system_id is empty" in done.stdout
    assert "404" not in done.stdout


def test_check_refuses_a_named_config_file_that_does_not_exist(tmp_path: Path) -> None:
    done = _check(tmp_path / "missing.toml")
    assert done.returncode != 0 and "missing.toml: no such config file" in done.stderr


def test_check_follows_the_readme_s_webhook_step_before_the_token_exists(
    tmp_path: Path, fake_pk: FakePluralKit, system_creds: dict[str, str],
) -> None:
    """`signing_token = "file:pk-signing-token"`, the file not written yet, then empty: `run`
    starts (polling, dispatches refused), so `check` passes, warning about it."""
    system = {**system_creds, "signing_token": "file:pk-signing-token", "mode": "auto"}
    cfg = write_config(tmp_path / "pkrelay.toml",
                       {"systems": [system], "pluralkit": {"api_base_url": fake_pk.base_url}})
    done = _check(cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "systems.0.signing_token: its file pk-signing-token" in done.stderr and "WARNING" in done.stderr
    assert "warn system home: no signing_token yet" in done.stdout and "all checks passed" in done.stdout
    (tmp_path / "pk-signing-token").touch()
    done = _check(cfg)
    assert done.returncode == 0 and "warn system home: no signing_token yet" in done.stdout, done.stdout
    assert "does not exist" not in done.stderr


def test_check_tries_each_sink_and_the_members_it_names(
    tmp_path: Path, fake_pk: FakePluralKit, fake_system: FakeSystem, system_creds: dict[str, str],
) -> None:
    """Closed ports are FAILs naming the sink (host and port only: a URL can hold a secret);
    a reachable webhook gets a connection and no request; `members` must name members."""
    fake_pk.add_member(fake_system, "Alex")
    closed = free_port()
    listening = SinkServer()
    listening.start()
    try:
        cfg = write_config(tmp_path / "pkrelay.toml", {
            "systems": [{**system_creds, "mode": "poll"}], "pluralkit": {"api_base_url": fake_pk.base_url},
            "sinks": [{"type": "mqtt", "name": "broker", "url": f"mqtt://user:pw-secret@127.0.0.1:{closed}",
                       "members": ["Alex", "Sam"]},
                      webhook_sink(f"http://127.0.0.1:{closed}/api/webhook/hook-secret", name="ha"),
                      webhook_sink(listening.url, name="fine")]})
        done = _check(cfg)
    finally:
        listening.stop()
    assert done.returncode == 1, done.stdout
    assert f"FAIL sink broker (mqtt): cannot reach 127.0.0.1:{closed}" in done.stdout
    assert f"FAIL sink ha (webhook): cannot reach 127.0.0.1:{closed}" in done.stdout
    assert "ok   sink fine (webhook): " in done.stdout and not listening.received
    assert "FAIL sink broker (mqtt): members names no member 'Sam' of home" in done.stdout
    assert "pw-secret" not in done.stdout and "hook-secret" not in done.stdout
    assert "all checks passed" not in done.stdout
