"""Whole volumes as slices and back (meditok.data.volumes), on the real volumes available offline, without a model:
the prepared slices themselves are assembled back, so every voxel the tokens cover must come back exactly."""

from __future__ import annotations

import tarfile

import nibabel as nib
import numpy as np
import pytest

from meditok.data import load_unit_image
from meditok.data.samples import INVESALIUS_CRANIUM, sample_paths
from meditok.data.testing import require, write_dicom_series
from meditok.data.volumes import VolumeSlices, assemble_volume, collate_slices
from meditok.tokenizer.preprocessing import ImageInput, preprocess

NATIVE = ImageInput(resize="native", ct_window="common")


def _mni152():
    found = [p for p in sample_paths("mri") if p.name.startswith("mni_icbm152_t1")]
    require(bool(found), "MNI152 template missing: pip install nilearn (meditok-data[samples])")
    return found[0]


def _cranium_hu() -> tuple[np.ndarray, tuple[float, float, float]]:
    """The invesalius-examples CT (slices, rows, columns) in HU, read with tarfile + numpy only (not our reader)."""
    require(INVESALIUS_CRANIUM.exists(), "apt-get install invesalius-examples")
    import plistlib

    with tarfile.open(INVESALIUS_CRANIUM) as archive:
        members = {m.name.rsplit("/", 1)[-1]: m for m in archive.getmembers()}
        plist = plistlib.loads(archive.extractfile(members["main.plist"]).read())
        raw = archive.extractfile(members["matrix.dat"]).read()
    hu = np.frombuffer(raw, "<i2").reshape([int(s) for s in plist["matrix"]["shape"]])
    spacing_x, spacing_y, spacing_z = (float(s) for s in plist["spacing"])
    return hu, (spacing_y, spacing_x, spacing_z)


def _unit_slices(dataset: VolumeSlices) -> tuple[dict[int, np.ndarray], list]:
    """Every prepared slice back in [0, 1] (what a perfect tokenizer would decode), filling the geometry's bounds."""
    geometry = dataset.geometry()
    unit = {}
    for item in (dataset[i] for i in range(len(dataset))):
        batch = collate_slices([item])
        assert not batch["errors"], batch["errors"]
        unit[item["index"]] = ((batch["images"][0].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32)
        geometry.bounds[item["index"]] = list(item["bounds"])
    return unit, geometry


def test_ct_series_round_trip_is_exact_in_hu_with_the_tag_affine(tmp_path):
    hu, spacing = _cranium_hu()
    hu = hu[::9]  # 12 of the 108 slices (spacing x9): a real series, small enough for the test budget
    spacing = (spacing[0], spacing[1], spacing[2] * 9)
    write_dicom_series(hu, tmp_path / "series", spacing)
    dataset = VolumeSlices(tmp_path / "series", NATIVE)
    # one contract: slice i is what read_2d(folder, slice_index=i) gives through unit_image + preprocess
    for index in (0, 5, 11):
        expected = preprocess(load_unit_image(tmp_path / "series", NATIVE, slice_index=index)[0], NATIVE)[0]
        assert np.array_equal(dataset[index]["image"].numpy(), expected.numpy())
    unit, geometry = _unit_slices(dataset)
    assert geometry.bounds[0] == [-1000.0, 1000.0] and geometry.dicom["files"] == 12
    rebuilt = assemble_volume(unit, geometry)
    written = nib.load(rebuilt.save(tmp_path / "recon.nii.gz"))
    # Reference with pydicom's tags + nibabel only: LPS voxel grid (column, row, slice) -> RAS, closest canonical.
    lps = np.eye(4)
    lps[:3, :3] = np.diag([spacing[1], spacing[0], spacing[2]])
    reference = nib.as_closest_canonical(nib.Nifti1Image(hu.transpose(2, 1, 0), np.diag([-1, -1, 1, 1]) @ lps))
    assert written.shape == reference.shape == (256, 256, 12)
    assert np.allclose(written.affine, reference.affine, atol=1e-5, rtol=0)  # float32 in the header
    assert written.get_data_dtype().kind == "i"  # HU as integers, as the reader gives them
    assert np.array_equal(np.asanyarray(written.dataobj), np.clip(np.asanyarray(reference.dataobj), -1000, 1000))


@pytest.mark.parametrize("plane", ["axial", "coronal"])
def test_nifti_keeps_its_voxel_order_affine_and_values(tmp_path, plane):
    mni = _mni152()
    source = nib.load(mni)
    # the template is stored RAS; a copy stored in another voxel order (P, R, I) checks that orientation is undone
    stored = source.as_reoriented(nib.orientations.axcodes2ornt(("A", "L", "I"))) if plane == "coronal" else source
    path = tmp_path / "stored.nii.gz"
    nib.save(stored, path)
    assert nib.aff2axcodes(nib.load(path).affine) == (("P", "R", "I") if plane == "coronal" else ("R", "A", "S"))
    dataset = VolumeSlices(path, NATIVE, plane=plane)
    unit, geometry = _unit_slices(dataset)
    assert all(b == [0.0, 255.0] for b in geometry.bounds)  # uint8 voxels mean x/255
    written = nib.load(assemble_volume(unit, geometry).save(tmp_path / "recon.nii.gz"))
    original = np.asanyarray(nib.load(path).dataobj)
    assert written.shape == original.shape and np.array_equal(written.affine, nib.load(path).affine)
    assert written.get_data_dtype() == np.uint8
    # "native" keeps the centre crop to multiples of 16 of every slice: those voxels come back exactly, the 1-8 voxel
    # rims the tokens do not cover hold the lowest bound (0)
    got = np.asanyarray(written.dataobj)
    covered = got != 0
    assert covered.mean() > 0.15 and np.array_equal(got[covered], original[covered])
    in_canonical = nib.as_closest_canonical(written).dataobj
    rows, cols = dataset.volume.slice(0, plane).pixels.shape
    axis = {"axial": 2, "coronal": 1}[plane]
    rims = [(n % 16) // 2 for n in (rows, cols)]  # _center_crop's top / left offsets
    middle = np.take(np.asanyarray(in_canonical), 80, axis=axis).T[::-1]  # display orientation, as .slice does
    inner = middle[rims[0] : rims[0] + rows // 16 * 16, rims[1] : rims[1] + cols // 16 * 16]
    expected = dataset.volume.slice(80, plane).pixels
    assert np.array_equal(inner, expected[rims[0] : rims[0] + rows // 16 * 16, rims[1] : rims[1] + cols // 16 * 16])
