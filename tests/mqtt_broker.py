"""Real MQTT broker processes for the tests: amqtt (pure Python, from PyPI) and
Mosquitto (Debian's `mosquitto`, the broker Home Assistant's add-on runs)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

from pkrelay.redis_server import die_with_parent, free_port
from tests.waiting import wait_until

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


class Broker:
    """One broker on a free port, without persistence: a restart forgets every
    retained message, as a broker without a persistence file does."""

    kind = "amqtt"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        config = self.directory / "amqtt.yaml"
        config.write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        return [str(Path(sys.executable).parent / "amqtt"), "-c", str(config)]

    def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent)
        try:
            wait_until(self._listening, timeout, f"the MQTT broker ({self.kind}) to listen on {self.port}",
                       interval=0.05)
        except AssertionError:
            self.stop()
            raise

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Mosquitto(Broker):
    kind = "mosquitto"

    def command(self) -> list[str]:
        assert MOSQUITTO is not None
        config = self.directory / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        return [MOSQUITTO, "-c", str(config)]
