"""The secrets scan (tests/secrets_scan.py) catches a secret where it must never be."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def test_a_logged_secret_fails_the_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent.parent))
    pytester.makeconftest('pytest_plugins = ["tests.secrets_scan"]')
    pytester.makepyfile('''
import logging

def test_leaks(tmp_path):
    from pkrelay import config
    from tests.deployment import write_config
    config.load(write_config(tmp_path / "c.toml", {"systems": [{"name": "a", "signing_token": "tok-abcdefgh1234"}]}))
    logging.getLogger("pkrelay.x").warning("got %s", "tok-abcdefgh1234")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)  # the test ran; its teardown says why not
    result.stdout.fnmatch_lines(["*a secret (tok-…) appears in: 'got tok-abcdefgh1234'*"])
