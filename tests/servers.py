"""Running real servers from tests and benchmarks: an ASGI app in a thread, `pkrelay run`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.waiting import wait_until


class ThreadedServer:
    """uvicorn serving `app` on loopback from a daemon thread, reachable by other processes
    (with `config`, as given: e.g. `pkrelay serve`'s, from receiver.server)."""

    def __init__(self, app: Any, port: int, config: uvicorn.Config | None = None) -> None:
        config = config or uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                          interface="asgi3")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the server to start", interval=0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without pkrelay's own variables, so only the test's config applies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    return {**env, **extra}


def pkrelay_process(command: str, config: Path, output: Any = subprocess.DEVNULL,
                    **env: str) -> subprocess.Popen[bytes]:
    """`pkrelay COMMAND --config config` as its own process (serve, worker, migrate...)."""
    return subprocess.Popen([sys.executable, "-m", "pkrelay", command, "--config", str(config)],
                            env=clean_env(**env), stdout=output, stderr=subprocess.STDOUT)


@contextmanager
def pkrelay_run(config: Path, port: int, output: int | None = subprocess.DEVNULL,
                cwd: Path | None = None, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`pkrelay run --config config` until it answers /readyz; SIGTERM on the way out."""
    proc = subprocess.Popen([sys.executable, "-m", "pkrelay", "run", "--config", str(config)], env=clean_env(**env),
                            stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"pkrelay run exited ({proc.returncode}) before it was ready")
            return ready(port)

        wait_until(up, 30, f"pkrelay run to answer /readyz on {port}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
