"""The shape of the code: small modules, and layers a tool checks.

A module that grows past MAX_LINES usually holds a second concept; split it by concept
rather than raise the bound. The layers (receiver/ and workers/ never import each
other, the shared package imports neither, no import cycles) are import-linter's
contracts in pyproject.toml, which .ci/run checks with `lint-imports`.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 300


def test_no_module_is_over_300_lines() -> None:
    sizes = {path.relative_to(ROOT): len(path.read_text().splitlines())
             for package in ("pkrelay", "receiver", "workers") for path in (ROOT / package).rglob("*.py")}
    assert {str(p): n for p, n in sizes.items() if n > MAX_LINES} == {}

