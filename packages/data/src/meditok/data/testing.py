"""Test helper shared by every MedITok package's tests (each runs in its own venv, all of which install meditok-data).

``require(condition, why)``: skip on a developer machine that lacks an optional source (sample images, a package),
fail in CI (``CI`` set to a true value, as `.ci/run` does), where everything must be installed.

Also a pytest plugin (``pytest -p meditok.data.testing``, as every nox test session loads it): at the end of the run
it prints the skipped tests ("skipped tests: none" when there are none), and in CI a run with any skipped test fails,
so that a skip that bypassed ``require`` (a raw ``pytest.skip``, ``importorskip``, ``skipif``) cannot hide a test."""

from __future__ import annotations

import os

TRUE_VALUES = {"1", "true", "yes", "on"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in TRUE_VALUES


def require(condition: bool, why: str) -> None:
    if condition:
        return
    import pytest  # only the tests need it: not a dependency of meditok-data

    if in_ci():
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


# ----------------------------------------------------------------------------------------------- pytest plugin

_SKIPPED: list[tuple[str, str]] = []  # (test id, reason), in the order pytest reported them


def _skip_reason(report) -> str:
    # A skip's longrepr is (file, line, "Skipped: why"); anything else (rare) is shown as it is.
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report) -> None:
    # xfail outcomes also report as skipped; they are not skips (the test ran) and this project uses none.
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report) -> None:
    # A module-level skip (importorskip at import time) skips a whole file at collection.
    if report.skipped:
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session, exitstatus) -> None:
    if _SKIPPED and in_ci() and exitstatus == 0:
        session.exitstatus = 1  # pytest's ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    write = terminalreporter.write_line
    if not _SKIPPED:
        write("skipped tests: none")
        return
    write(f"skipped tests: {len(_SKIPPED)}" + (" (CI: skips are failures, the run fails)" if in_ci() else ""))
    for nodeid, reason in _SKIPPED:
        write(f"  {nodeid}: {reason}")
