"""Test helper shared by every MedITok package's tests (each runs in its own venv, all of which install meditok-data).

``require(condition, why)``: skip on a developer machine that lacks an optional source (sample images, a package),
fail in CI (``CI`` set to a true value, as `.ci/run` does), where everything must be installed."""

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
