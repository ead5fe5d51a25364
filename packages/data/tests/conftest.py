"""Shared fixtures: real files from pydicom-data, nilearn, scikit-image, Debian packages (see ../shared/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meditok.data.samples import find_samples
from meditok.data.testing import require


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
