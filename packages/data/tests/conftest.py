"""Shared fixtures: real files from pydicom-data, nilearn, scikit-image, Debian packages (see ../shared/data/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meditok.data.samples import find_samples


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine that lacks an optional source; fail in CI, where everything must be installed."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI=true: every sample source must be installed)")
    pytest.skip(reason)


def dicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    require(path is not None, f"{name} not found: pip install pydicom-data")
    return Path(path)


def sample(name: str) -> Path:
    found = {s.name: s.path for s in find_samples()}
    require(name in found, f"sample {name} missing: see meditok.data.samples.missing_sources()")
    return found[name]


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from meditok.data.samples import assemble_samples

    out = tmp_path_factory.mktemp("samples")
    assemble_samples(out, dermoscopy_limit=8, progress=False)
    return out
