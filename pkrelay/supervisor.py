"""`pkrelay run`: the embedded Redis, the receiver and one worker as one process tree.

Children run in their own sessions so a terminal's Ctrl-C reaches only us, and we
stop them in order (receiver first, so nothing new arrives; then the worker; Redis
last). Each child also gets SIGTERM if we die without cleaning up (PR_SET_PDEATHSIG),
so no process is ever orphaned. A child that dies is restarted with backoff; one that
cannot start at all (its port is taken, it fails within seconds every time) stops
the whole tree with the reason instead of being restarted forever.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pkrelay import __version__, db
from pkrelay.config import WARNED_ENV, Settings
from pkrelay.redis_server import EmbeddedRedis, RedisServerError, die_with_parent, embedded_dir
from pkrelay.retry import Backoff

# `pkrelay serve` exits with this when its port is taken: `pkrelay run` then stops
# everything rather than restarting a receiver that cannot ever start.
EXIT_CANNOT_BIND = 3

log = logging.getLogger("pkrelay.run")
# A child that keeps dying is restarted after 0.5 s, then 1 s, 2 s, ... at most 30 s.
RESTART = Backoff(base=0.5, cap=30.0, jitter=False)

# A child that exits within FAST_EXIT_S of its start this many times in a row is
# not going to start: stop everything rather than loop.
FAST_EXIT_S = 5.0
FAST_EXITS = 5


class AlreadyRunning(RuntimeError):
    """Another `pkrelay run` holds this data directory."""


def lock_data_dir(data: Path) -> IO[str]:
    """Hold `data/pkrelay.lock` (with our pid in it) for the life of the process.

    Two `pkrelay run` on one data directory would run two servers on one append-only
    file and fight over the receiver's port; the second must stop at once instead.
    """
    data.mkdir(parents=True, exist_ok=True)
    lock = (data / "pkrelay.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise AlreadyRunning(f"another pkrelay run (pid {holder}) is using {data}; stop it first, "
                             "or give this one its own data_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def summary(settings: Settings, config_file: Path) -> str:
    """What this run uses, in a few lines: the first thing an owner needs to see."""
    server = settings.server
    lines = [f"pkrelay {__version__} starting",
             f"  config: {config_file.resolve()}" if config_file.is_file() else
             "  config: none, every default applies (`pkrelay init` writes a starter pkrelay.toml)",
             f"  data directory: {settings.data_path}"]
    systems = [f"{s.name} ({s.mode}; signing token {'set' if s.signing_token else 'not set'}, "
               f"API token {'set' if s.api_token else 'not set'})" for s in settings.systems]
    lines.append(f"  systems: {', '.join(systems) or 'none (add a [[systems]] table)'}")
    lines.append(f"  sinks: {', '.join(s.key for s in settings.sinks) or 'none (events are only logged)'}")
    origin = f"http://{server.host}:{server.port}"
    lines.append(f"  dashboard: {origin}/" if server.admin_token else
                 f"  receiver: {origin} (dashboard off: set server.admin_token)")
    webhooks = [s for s in settings.systems if s.mode != "poll"]
    if server.public_url:
        lines.append(f"  public URL: {server.public_url} (must reach {origin}{server.dispatch_path})")
        for system in webhooks:
            lines.append(f"  register {system.name}: `pk;system webhook {settings.dispatch_url(system)}`")
    elif webhooks:
        lines.append("  dispatch URL: unknown, server.public_url is not set; PluralKit needs a public https URL "
                     f"that reaches {origin}{server.dispatch_path} (or use mode = \"poll\")")
    return "\n".join(lines)


def warnings(settings: Settings) -> list[str]:
    """What the summary's reader must not miss: said as WARNINGs after it."""
    public = settings.server.public_url
    if public and not public.startswith("https://") and any(s.mode != "poll" for s in settings.systems):
        return [f"server.public_url {public} is not https: PluralKit only sends webhooks to https URLs on public "
                "addresses, so `pk;system webhook` will refuse it"]
    return []


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    fast_exits: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.started_at = time.monotonic()
        log.debug("started %s (pid %d)", self.name, self.process.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s, killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


class Supervisor:
    def __init__(self, settings: Settings, config_file: Path) -> None:
        self.settings = settings
        self.config_file = config_file
        self.stopping = False
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until a signal (0) or until the tree cannot work (1, the reason logged)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        data = self.settings.data_path
        try:
            lock = lock_data_dir(data)
        except AlreadyRunning as exc:
            log.error("%s", exc)
            return 1
        # The children load the same file: this process gave its removed-key warnings.
        env = dict(os.environ, PKRELAY_LOG_LEVEL=self.settings.log_level, **{WARNED_ENV: "1"})
        if self.config_file.is_file():
            env["PKRELAY_CONFIG"] = str(self.config_file.resolve())
        status = 0
        try:
            asyncio.run(db.migrate_url(self.settings.database_url))
            if not self.settings.redis.url:
                self.redis = EmbeddedRedis(embedded_dir(data))
                self.redis.start()
                env["PKRELAY_REDIS__URL"] = self.redis.url
                log.debug("embedded Redis-compatible server on %s (append-only file in %s)", self.redis.url,
                          self.redis.directory)
            metrics_dir = data / "metrics"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
            base = [sys.executable, "-m", "pkrelay"]
            self.children = [
                Child("receiver", [*base, "serve"], env),
                Child("worker", [*base, "worker"], env),
            ]
            for line in summary(self.settings, self.config_file).splitlines():  # the log escapes newlines
                log.info("%s", line)
            for warning in warnings(self.settings):
                log.warning("%s", warning)
            for child in self.children:
                child.start()
            while not self.stopping:
                failure = self._watch()
                if failure:
                    log.error("%s; stopping", failure)
                    status = 1
                    break
                time.sleep(0.2)
        except RedisServerError as exc:
            log.error("the embedded Redis-compatible server cannot start: %s", exc)
            status = 1
        finally:
            for child in self.children:
                child.stop()
            if self.redis:
                self.redis.stop()
            log.info("stopped")
            lock.close()
        return status

    def _watch(self) -> str | None:
        """Restart what died; the reason to give up, when restarting cannot help."""
        if self.redis and self.redis.process and self.redis.process.poll() is not None:
            log.error("embedded Redis exited with %s, restarting it", self.redis.process.returncode)
            self.redis.start()
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None:
                if now >= child.next_start:
                    child.start()
                continue
            code = process.poll()
            if code is None:
                if now - child.started_at > 60:
                    child.restarts = 0
                continue
            if code == EXIT_CANNOT_BIND:
                return (f"the {child.name} cannot listen on {self.settings.server.host}:{self.settings.server.port}"
                        " (the port is in use; set server.port)")
            child.fast_exits = child.fast_exits + 1 if now - child.started_at < FAST_EXIT_S else 0
            if child.fast_exits >= FAST_EXITS:
                return (f"the {child.name} exited with {code} within {FAST_EXIT_S:.0f} s of starting "
                        f"{FAST_EXITS} times in a row (its output above says why)")
            delay = RESTART.delay(child.restarts + 1)
            log.error("%s exited with %s, restarting in %.1f s", child.name, code, delay)
            child.process, child.restarts, child.next_start = None, child.restarts + 1, now + delay
        return None
