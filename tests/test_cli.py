"""The command line answers mistakes: a message on stderr and a non-zero exit, never silence."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import pkrelay
from pkrelay import config
from pkrelay.redis_server import EmbeddedRedis
from tests.deployment import write_config


def _pkrelay(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
    return subprocess.run([sys.executable, "-m", "pkrelay", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, stdin=subprocess.DEVNULL, timeout=60)


@pytest.fixture
def cfg(tmp_path: Path, redis_server: EmbeddedRedis) -> Path:
    path = write_config(tmp_path / "pkrelay.toml", {"systems": [{"name": "home", "mode": "poll"}],
                                                    "redis": {"url": redis_server.url}})
    assert _pkrelay("migrate", "--config", str(path)).returncode == 0
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["events", "--system", "nosuch"], "no system 'nosuch': configured systems are home"),
        (["events", "--type", "update_member"], "event types are upper case: --type UPDATE_MEMBER"),
        (["events", "--type", "CREATE_SWTICH"], "did you mean CREATE_SWITCH?"),
        (["replay", "evt_NOPE"], "no such event: evt_NOPE"),
    ],
)
def test_a_mistake_is_said_not_silently_empty(cfg: Path, args: list[str], expected: str) -> None:
    done = _pkrelay(*args, "--config", str(cfg))
    assert done.returncode != 0
    assert expected in done.stderr and done.stdout == ""


@pytest.mark.parametrize("command", [["run"], ["serve"], ["worker"], ["migrate"], ["check"], ["events"],
                                     ["replay", "--dead"], ["backfill"]])
def test_every_command_refuses_a_config_file_that_does_not_exist(tmp_path: Path, command: list[str]) -> None:
    done = _pkrelay(*command, "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 2
    assert "missing.toml: no such config file" in done.stderr


def test_init_writes_a_starter_that_loads_and_never_overwrites(tmp_path: Path) -> None:
    first = _pkrelay("init", cwd=tmp_path)  # stdin is not a terminal: no questions
    assert first.returncode == 0, first.stderr
    written = (tmp_path / "pkrelay.toml").read_text()
    settings = config.load(tmp_path / "pkrelay.toml", {})
    assert [s.name for s in settings.systems] == ["home"] and settings.data_dir == str(tmp_path / "data")
    assert {"pk-api-token", "pk-signing-token", "data/"} <= set((tmp_path / ".gitignore").read_text().splitlines())
    (tmp_path / "pkrelay.toml").write_text(written + "# mine now\n")
    again = _pkrelay("init", cwd=tmp_path)
    assert again.returncode != 0 and "exists; not overwriting it" in again.stderr
    assert (tmp_path / "pkrelay.toml").read_text().endswith("# mine now\n")


def test_verbose_shows_what_the_default_level_hides(tmp_path: Path) -> None:
    for name in ("quiet", "verbose"):
        (tmp_path / name).mkdir()
    quiet = _pkrelay("migrate", cwd=tmp_path / "quiet")
    assert quiet.returncode == 0 and "alembic" not in quiet.stderr
    verbose = _pkrelay("migrate", "--verbose", cwd=tmp_path / "verbose")
    assert verbose.returncode == 0 and "alembic" in verbose.stderr


def test_version_is_pyprojects(tmp_path: Path) -> None:
    """One source: pyproject.toml's version, through the installed package's metadata."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pkrelay.__version__ == pyproject["project"]["version"]
    done = _pkrelay("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"pkrelay {pyproject['project']['version']}"


def test_init_leaves_an_existing_gitignore_alone_and_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("mine\n")
    done = _pkrelay("init", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / ".gitignore").read_text() == "mine\n"
    assert ".gitignore exists: add the token files" in done.stdout


def test_replay_since_takes_a_duration(cfg: Path) -> None:
    done = _pkrelay("replay", "--since", "10m", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "queued 0 deliveries"
    wrong = _pkrelay("replay", "--since", "yesterday", "--config", str(cfg))
    assert wrong.returncode == 2 and "neither a duration (30s, 10m, 2h, 1d) nor an ISO 8601 time" in wrong.stderr


def test_deliveries_says_when_there_are_none(cfg: Path) -> None:
    done = _pkrelay("deliveries", "--config", str(cfg))
    assert done.returncode == 0 and done.stdout == "" and "no deliveries in state dead" in done.stderr
    done = _pkrelay("deliveries", "--state", "pending", "--sink", "ha", "--config", str(cfg))
    assert "no deliveries in state pending of sink ha" in done.stderr
