"""Whole volumes through the tokenizer (meditok.tokenizer.volumes and `meditok --volume`) on real offline volumes:
pydicom-data's multi-frame MR, nilearn's MNI152 T1 and Debian's invesalius-examples head CT (meditok-data needed)."""

from __future__ import annotations

import math
import plistlib
import tarfile

import numpy as np
import torch
from PIL import Image

from meditok.tokenizer.cli import main
from meditok.tokenizer.preprocessing import preprocess


def _sample(prefix: str, modality: str):
    from meditok.data.samples import sample_paths
    from meditok.data.testing import require

    found = [p for p in sample_paths(modality) if p.name.startswith(prefix)]
    require(
        bool(found), f"{prefix}: pip install 'meditok-data[samples]' pydicom-data / apt-get install invesalius-examples"
    )
    return found[0]


def test_slice_codes_are_the_image_contract_and_decode_in_the_source_grid(tiny, tmp_path):
    import nibabel as nib

    from meditok.data import load_unit_image, read_volume

    path = _sample("emri_small", "mri")  # 10 frames of 64x64 MR
    skipped = []
    encoded = tiny.encode_volume(path, batch_size=4, size=64, progress=False, on_skip=lambda i, r: skipped.append(i))
    assert encoded.codes.shape == (10, 8, 16) and list(encoded.slices) == list(range(10)) and not skipped
    spec = tiny.image_input.with_overrides(size=64)
    for frame in (0, 4, 9):  # frame i of the file = axial slice i of the volume, through the same two steps
        expected = tiny.encode(preprocess(load_unit_image(path, spec, frame=frame)[0], spec))[0]
        assert torch.equal(encoded.codes[frame], expected)
    rebuilt = tiny.decode_volume(encoded, batch_size=4, progress=False)
    written = nib.load(rebuilt.save(tmp_path / "emri_recon.nii.gz"))
    volume = read_volume(path)
    assert written.shape == volume.shape and written.get_data_dtype() == np.uint16
    assert np.array_equal(written.affine, np.diag([*volume.spacing, 1.0]))
    assert read_volume(tmp_path / "emri_recon.nii.gz").shape == volume.shape


def test_cli_encodes_decodes_and_reconstructs_volumes(tiny_weights, tmp_path, capsys):
    import nibabel as nib

    from meditok.data.volumes import load_volume_codes

    mni = _sample("mni_icbm152_t1", "mri")
    cranium = _sample("Cranium", "ct")
    weights = str(tiny_weights["directory"])
    codes = tmp_path / "codes.npz"
    assert main(["encode", "--volume", str(mni), "--weights", weights, "--size", "32", "--batch-size", "64",
                 "-o", str(codes)]) == 0  # fmt: skip
    assert "wrote codes of 1 volume(s)" in capsys.readouterr().out
    (item,) = load_volume_codes(codes)
    assert item.codes.shape == (189, 8, 4) and item.geometry.plane == "axial"
    assert main(["decode", str(codes), "--weights", weights, "-o", str(tmp_path / "dec")]) == 0
    decoded = nib.load(tmp_path / "dec" / "mni_icbm152_t1_tal_nlin_sym_09a_converted_recon.nii.gz")
    assert decoded.shape == nib.load(mni).shape and np.array_equal(decoded.affine, nib.load(mni).affine)

    out = tmp_path / "rec"
    assert main(["reconstruct", "--volume", str(cranium), "--axis", "sagittal", "--weights", weights, "--size", "32",
                 "--batch-size", "64", "-o", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    written = nib.load(out / "Cranium_recon.nii.gz")
    assert written.shape == (256, 256, 108)
    assert np.allclose(written.affine, np.diag([0.957031, 0.957031, 1.5, 1.0]), atol=1e-6)
    # PSNR in HU recomputed from the written volume and the CT read with tarfile + numpy only: the "common" window
    # (-1000, 1000 HU) is what the tokenizer sees, so the original is clipped to it and the peak is its width
    with tarfile.open(cranium) as archive:
        members = {m.name.rsplit("/", 1)[-1]: m for m in archive.getmembers()}
        shape = plistlib.loads(archive.extractfile(members["main.plist"]).read())["matrix"]["shape"]
        hu = np.frombuffer(archive.extractfile(members["matrix.dat"]).read(), "<i2").reshape(shape)
    original = np.clip(hu.transpose(2, 1, 0).astype(np.float64), -1000, 1000)
    mse = np.mean((np.asanyarray(written.dataobj).astype(np.float64) - original) ** 2)
    expected = 10 * math.log10(2000.0**2 / mse)
    reported = float(printed.split("PSNR ")[1].split(" dB in HU")[0])
    assert abs(reported - expected) < 0.02  # the report uses the unrounded HU; the file holds integers
    rows = (out / "Cranium_psnr.csv").read_text().splitlines()
    assert rows[0] == "sagittal_slice,psnr_db" and len(rows) == 257
    picture = np.asarray(Image.open(out / "Cranium_recon.png"))
    assert picture.ndim == 2 and picture.shape[0] > 2 * 160  # two rows of panels


def test_a_bad_slice_is_said_and_skipped_the_rest_continue(tiny_weights, tmp_path, capsys):
    import nibabel as nib

    from meditok.data import read_volume
    from meditok.data.volumes import load_volume_codes

    source = read_volume(_sample("emri_small", "mri"))
    voxels = source.voxels.astype(np.float32)
    voxels[10:20, 10:20, 3] = np.nan  # one broken axial slice
    path = tmp_path / "broken.nii.gz"
    nib.save(nib.Nifti1Image(voxels, np.diag([*source.spacing, 1.0])), path)
    weights = str(tiny_weights["bare"])
    codes = tmp_path / "codes.npz"
    assert main(["encode", "--volume", str(path), "--weights", weights, "--size", "32", "-o", str(codes)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {path}: axial slice 3: 100 non-finite pixel value(s)" in err and "Traceback" not in err
    (item,) = load_volume_codes(codes)
    assert list(item.slices) == [0, 1, 2, 4, 5, 6, 7, 8, 9] and item.geometry.bounds[3] is None
    assert main(["decode", str(codes), "--weights", weights, "-o", str(tmp_path / "d")]) == 0
    assert nib.load(tmp_path / "d" / "broken_recon.nii.gz").shape == (64, 64, 10)
    rc = main(["encode", "--volume", str(path), "--weights", weights, "--strict", "-o", str(tmp_path / "s.npz")])
    assert rc == 1 and "axial slice 3" in capsys.readouterr().err and not (tmp_path / "s.npz").exists()


def test_without_meditok_data_volumes_are_one_line_naming_the_package(tiny_weights, tmp_path, monkeypatch, capsys):
    import sys

    import pytest

    volume = tmp_path / "v.nii.gz"
    volume.write_bytes(b"\x1f\x8b")  # never read: the missing package is said first
    monkeypatch.setitem(sys.modules, "meditok.data", None)
    for command, out in (("encode", "c.npz"), ("reconstruct", "r")):
        argv = [command, "--volume", str(volume), "--weights", str(tiny_weights["bare"]), "-o", str(tmp_path / out)]
        assert main(argv) == 1
        assert "tokenising volumes needs meditok-data (pip install meditok-data)" in capsys.readouterr().err
    from meditok.tokenizer import MedITok

    with pytest.raises(ImportError, match="needs meditok-data"):
        MedITok.from_pretrained(tiny_weights["bare"]).encode_volume(volume)
