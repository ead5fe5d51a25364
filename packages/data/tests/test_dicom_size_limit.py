"""A DICOM's declared size is checked against a pixel limit from its header, before decoding or inflating (issue 12.7):
a small deflate-compressed file whose data set inflates to 128 MB is refused while holding a few MB. NIfTI bytes (an
upload) likewise: the header's voxel count against ``max_voxels``, and a gzip stream inflated no further than the
header declares."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from meditok.data import MedicalImageError
from meditok.data.loading import read_2d
from meditok.data.readers import read_dicom
from meditok.data.testing import synthetic_dicom


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """8000 x 8000 16-bit zeros, deflated: 128 MB of data set in a file of about 125 KB."""
    data = synthetic_dicom(8000, 8000, bytes(8000 * 8000 * 2), deflated=True)
    assert len(data) < 1_000_000
    return data


def test_a_deflated_bomb_is_refused_from_its_header_without_inflating(bomb, tmp_path):
    limit = 2000 * 2000
    tracemalloc.start()
    try:
        with pytest.raises(MedicalImageError) as caught:
            read_dicom("upload.dcm", data=bomb, max_pixels=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith("upload.dcm:")
    assert "8000 x 8000" in message and str(8000 * 8000) in message and str(limit) in message
    assert peak < 8 * 2**20, peak  # pydicom alone inflates all 128 MB before anyone sees the header
    # the module-level default applies to every door: read_2d on bytes and on a file
    path = tmp_path / "bomb.dcm"
    path.write_bytes(bomb)
    with pytest.raises(MedicalImageError, match="bomb.dcm: DICOM header declares 8000 x 8000"):
        read_2d(path, max_pixels=limit)
    with pytest.raises(MedicalImageError, match="8000 x 8000"):
        read_2d(bomb, name="x.dcm", max_pixels=limit)


def test_the_default_limit_and_files_within_it(monkeypatch):
    from meditok.data import readers

    pixels = (np.arange(64 * 48, dtype=np.uint16) * 7).reshape(64, 48)
    for deflated in (True, False):
        data = synthetic_dicom(64, 48, pixels.tobytes(), deflated=deflated)
        image = read_dicom("small.dcm", data=data)
        assert np.array_equal(image.pixels, pixels), deflated
        monkeypatch.setattr(readers, "MAX_PIXELS", 64 * 48 - 1)
        with pytest.raises(MedicalImageError, match=f"= {64 * 48} values, more than the limit of {64 * 48 - 1}"):
            read_dicom("small.dcm", data=data)
        assert read_dicom("small.dcm", data=data, max_pixels=0).pixels.shape == (64, 48)  # 0: no limit
        monkeypatch.undo()


def test_a_deflated_data_set_larger_than_its_header_declares_is_refused():
    # the header says 64 x 48 (6 KB of pixels) but the pixel data element holds 40 MB (more than the 16 MiB of header
    # that are inflated before the size is known)
    data = synthetic_dicom(64, 48, bytes(40 * 2**20), deflated=True)
    with pytest.raises(MedicalImageError, match="inflates beyond"):
        read_dicom("liar.dcm", data=data)


def _nifti_gz(shape: tuple[int, ...], extra: bytes = b"") -> bytes:
    import gzip

    import nibabel as nib

    raw = nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)).to_bytes()
    return gzip.compress(raw + extra, 6)


def test_nifti_bytes_are_checked_from_the_header_before_inflating():
    bomb = _nifti_gz((512, 512, 128))  # 33.5 M voxels, 33.5 MB inflated, ~33 KB as sent
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(MedicalImageError) as caught:
            read_2d(bomb, name="upload.nii.gz", max_voxels=2**24)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith("upload.nii.gz: NIfTI header declares 512 x 512 x 128 = 33554432 voxels")
    assert str(2**24) in str(caught.value) and peak < 4 * 2**20, peak
    # a header that declares 8 x 8 x 8 voxels over a gzip stream holding 8 MB more is refused at its declared size
    with pytest.raises(MedicalImageError, match="inflates beyond the .* bytes its header declares"):
        read_2d(_nifti_gz((8, 8, 8), bytes(8 * 2**20)), name="liar.nii.gz")
    # within the limits it reads as before (the middle axial slice of the volume)
    small = read_2d(_nifti_gz((6, 5, 4)), name="small.nii.gz", max_voxels=6 * 5 * 4)
    assert small.pixels.shape[0] * small.pixels.shape[1] == 30
