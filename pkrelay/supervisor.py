"""`pkrelay run`: the embedded Redis, the receiver and one worker as one process tree.

Children run in their own sessions so a terminal's Ctrl-C reaches only us, and we
stop them in order (receiver first, so nothing new arrives; then the worker; Redis
last). Each child also gets SIGTERM if we die without cleaning up (PR_SET_PDEATHSIG),
so no process is ever orphaned. A child that dies is restarted with backoff.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pkrelay.config import Settings
from pkrelay.retry import Backoff
from pkrelay.redis_server import EmbeddedRedis, die_with_parent, embedded_dir

log = logging.getLogger("pkrelay.run")
# A child that keeps dying is restarted after 0.5 s, then 1 s, 2 s, ... at most 30 s.
RESTART = Backoff(base=0.5, cap=30.0, jitter=False)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

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
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        data = self.settings.data_path
        data.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PKRELAY_CONFIG=str(self.config_file.resolve()))
        if not self.settings.redis.url:
            self.redis = EmbeddedRedis(embedded_dir(data))
            self.redis.start()
            env["PKRELAY_REDIS__URL"] = self.redis.url
            log.info("embedded Redis-compatible server on %s (append-only file in %s)", self.redis.url,
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
        try:
            for child in self.children:
                child.start()
            while not self.stopping:
                self._watch()
                time.sleep(0.2)
        finally:
            for child in self.children:
                child.stop()
            if self.redis:
                self.redis.stop()
            log.info("stopped")
        return 0

    def _watch(self) -> None:
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
            if process.poll() is None:
                if now - child.started_at > 60:
                    child.restarts = 0
                continue
            delay = RESTART.delay(child.restarts + 1)
            log.error("%s exited with %s, restarting in %.1f s", child.name, process.returncode, delay)
            child.process, child.restarts, child.next_start = None, child.restarts + 1, now + delay
