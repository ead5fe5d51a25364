"""The skip-list plugin (`pytest -p meditok.data.testing`, loaded by every nox test session): it prints the skipped
tests, "none" when there are none, and in CI (CI=true) turns a run with any skip into a failure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TESTS = {
    "test_ran.py": "def test_ran():\n    pass\n",
    "test_skips.py": "import pytest\n\n\ndef test_skipped():\n    pytest.skip('no widget here')\n",
    "test_module_skip.py": "import pytest\n\npytest.importorskip('no_such_module_zz')\n\n\ndef test_never():\n    pass\n",
}


def _pytest(folder, *files, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only this plugin
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "meditok.data.testing", *files]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def folder(tmp_path):
    for name, text in TESTS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keep the repository's pytest settings out
    return tmp_path


def test_no_skips_prints_none_and_passes_in_ci(folder):
    result = _pytest(folder, "test_ran.py", ci=True)
    assert result.returncode == 0, result.stdout
    assert "skipped tests: none" in result.stdout


@pytest.mark.parametrize("ci", [False, True])
def test_skips_are_listed_and_fail_only_in_ci(folder, ci):
    result = _pytest(folder, ci=ci)
    assert result.returncode == (1 if ci else 0), result.stdout
    assert "skipped tests: 2" in result.stdout
    assert "test_skips.py::test_skipped: no widget here" in result.stdout
    assert "test_module_skip.py: could not import 'no_such_module_zz'" in result.stdout
    assert "1 passed, 2 skipped" in result.stdout
