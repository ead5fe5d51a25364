"""meditok.demo.core without a browser: the codes, PSNR and error messages of an upload equal the `meditok` CLI's for
the same file; a zipped series reads as meditok-data reads its folder; a hostile zip stays inside its folder."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_skip_reason, run_cli

from meditok.demo import core
from meditok.tokenizer.image_files import ImageFileError


@pytest.fixture(scope="module")
def tok(models):
    from meditok.tokenizer import MedITok

    return MedITok.from_pretrained(models["tokenizer"]).eval()


def _cli_codes(path: Path, weights: Path, tmp: Path, *flags: str) -> np.lib.npyio.NpzFile:
    code, _, err = run_cli(["encode", path.name, "--weights", str(weights), "-o", str(tmp / "cli.npz"), *flags],
                           path.parent)  # fmt: skip
    assert code == 0, err
    return np.load(tmp / "cli.npz")


def _samples() -> list:
    from meditok.data.samples import sample_paths

    fundus = [p for p in sample_paths("fundus") if p.suffix == ".png"][:1]
    mri = [p for p in sample_paths("mri") if str(p).endswith(".nii.gz")][:1]
    return fundus + mri


@pytest.mark.parametrize("window", [None, "lung"])
def test_ct_codes_file_equals_the_cli_encode(tok, models, ct_path, tmp_path, window):
    result = core.tokenize_upload(tok, ct_path, ct_path.name, tmp_path, ct_window=window)
    ours = np.load(core.write_codes(result, tmp_path / "demo.npz"))
    cli = _cli_codes(ct_path, models["tokenizer"], tmp_path, *(["--ct-window", window] if window else []))
    assert sorted(ours.files) == sorted(cli.files) == ["codes_0", "format", "names"]
    assert ours["codes_0"].dtype == cli["codes_0"].dtype == np.uint16
    np.testing.assert_array_equal(ours["codes_0"], cli["codes_0"])
    assert list(ours["names"]) == list(cli["names"]) == [ct_path.name]
    assert str(ours["format"]) == str(cli["format"])


def test_png_and_nifti_codes_equal_the_cli_encode(tok, models, tmp_path):
    samples = _samples()
    assert len(samples) == 2, "a fundus PNG and a NIfTI MR are in meditok-data[samples]"
    for path in samples:
        result = core.tokenize_upload(tok, path, path.name, tmp_path)
        cli = _cli_codes(path, models["tokenizer"], tmp_path)
        np.testing.assert_array_equal(result.codes, cli["codes_0"])


def test_psnr_equals_the_cli_reconstruct_and_ssim_equals_scikit_image(tok, models, ct_path, tmp_path):
    from skimage.metrics import structural_similarity

    result = core.tokenize_upload(tok, ct_path, ct_path.name, tmp_path)
    code, out, err = run_cli(["reconstruct", ct_path.name, "--weights", str(models["tokenizer"]), "-o",
                              str(tmp_path / "recon")], ct_path.parent)  # fmt: skip
    assert code == 0, err
    printed = re.search(rf"{re.escape(ct_path.name)}: PSNR ([-\d.]+) dB", out).group(1)
    assert f"{result.psnr:.2f}" == printed
    # The CLI's side-by-side PNG holds the same two 8-bit images the page shows.
    side_by_side = np.asarray(__import__("PIL.Image").Image.open(next((tmp_path / "recon").glob("*.png"))))
    np.testing.assert_array_equal(side_by_side, np.concatenate([result.original, result.reconstruction], axis=1))
    expected = structural_similarity(result.original, result.reconstruction, channel_axis=-1, data_range=255,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)  # fmt: skip
    assert result.ssim == pytest.approx(expected, abs=1e-3)
    assert result.codes.shape == (8, 16, 16) and result.error_map.shape == (256, 256, 3)
    assert [positions for _, positions in result.usage] == [256] * 8
    assert [used for used, _ in result.usage] == [len(np.unique(k)) for k in result.codes]


@pytest.mark.parametrize("kind", ["pdf", "truncated", "huge_dicom", "huge_png"])
def test_a_bad_upload_gives_the_cli_message(tok, models, bad_files, tmp_path, kind):
    path = bad_files[kind]
    expected = cli_skip_reason(path, models["tokenizer"], tmp_path)
    # The page gets the server's temporary copy: the message must name the visitor's file as the CLI does.
    upload = tmp_path / "gradio-tmp" / "0123abcd" / path.name
    upload.parent.mkdir(parents=True)
    upload.write_bytes(path.read_bytes())
    with pytest.raises(ImageFileError) as caught:
        core.tokenize_upload(tok, upload, path.name, tmp_path)
    assert str(caught.value) == expected
    assert "\n" not in expected and expected.startswith(path.name)


def test_a_4d_nifti_reads_as_the_cli_reads_it_and_says_which_slice(tok, models, nifti_4d, tmp_path):
    result = core.tokenize_upload(tok, nifti_4d, nifti_4d.name, tmp_path)
    np.testing.assert_array_equal(result.codes, _cli_codes(nifti_4d, models["tokenizer"], tmp_path)["codes_0"])
    _, _, err = run_cli(["encode", nifti_4d.name, "--weights", str(models["tokenizer"]), "-o",
                         str(tmp_path / "x.npz")], nifti_4d.parent)  # fmt: skip
    cli_note = next(line for line in err.splitlines() if "is a volume" in line)
    assert result.notes[0] == cli_note
    assert "first time point of 3" in result.notes[1]


def test_a_chosen_slice_of_a_nifti_is_meditok_data_s_slice(tok, tmp_path):
    import torch

    from meditok.data import load_unit_image
    from meditok.tokenizer.preprocessing import preprocess

    nifti = [p for p in _samples() if str(p).endswith(".nii.gz")][0]
    result = core.tokenize_upload(tok, nifti, nifti.name, tmp_path, slice_index=40)
    pixels, _ = load_unit_image(nifti, tok.image_input, slice_index=40)
    with torch.no_grad():
        expected = tok.encode(preprocess(pixels, tok.image_input))[0].reshape(result.codes.shape).numpy()
    np.testing.assert_array_equal(result.codes, expected)
    assert "using its axial slice (index 40)" in result.notes[0]
    with pytest.raises(ImageFileError, match=rf"^{re.escape(nifti.name)}: "):
        core.tokenize_upload(tok, nifti, nifti.name, tmp_path, slice_index=100000)  # out of range: one line


def _series(source: Path, folder: Path, count: int = 3) -> list[Path]:
    """A CT series of ``count`` slices along z from one real CT slice (pixel values shifted per slice)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, paths = generate_uid(), []
    for index in range(count):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series_uid, generate_uid(), index + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        pixels = ds.pixel_array.astype(np.int32) + 300 * index
        ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()
        paths.append(folder / f"slice{count - index}.dcm")  # names out of order: the reader sorts by position
        ds.save_as(paths[-1])
    return paths


def test_a_zipped_series_reads_as_meditok_data_reads_its_folder(tok, ct_path, tmp_path):
    import torch

    from meditok.data import load_unit_image
    from meditok.tokenizer.preprocessing import preprocess

    paths = _series(ct_path, tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in paths:
            handle.write(path, f"CT/{path.name}")
    spec = tok.image_input
    for slice_index in (None, 0):
        result = core.tokenize_upload(tok, archive, archive.name, tmp_path / "work", slice_index=slice_index)
        pixels, _ = load_unit_image(tmp_path / "series", spec, slice_index=slice_index)
        with torch.no_grad():
            expected = tok.encode(preprocess(pixels, spec))[0].reshape(8, 16, 16).numpy()
        np.testing.assert_array_equal(result.codes, expected)
        assert "series.zip is a volume" in result.notes[0]
    middle = core.tokenize_upload(tok, archive, archive.name, tmp_path / "w2")
    assert "using its middle axial slice (index 1)" in middle.notes[0]
    assert "using its axial slice (index 0)" in result.notes[0]


def test_a_hostile_zip_stays_in_its_folder_and_is_bounded(tmp_path, monkeypatch):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../../escaped.dcm", b"x")
        handle.writestr("/abs/escaped2.dcm", b"y")
    out = core.unpack_series(archive, tmp_path / "deep" / "series")
    assert sorted(p.name for p in out.iterdir()) == ["00000_escaped.dcm", "00001_escaped2.dcm"]
    assert not (tmp_path / "escaped.dcm").exists() and not Path("/abs/escaped2.dcm").exists()
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("a.dcm", b"\0" * 100_000)
    monkeypatch.setattr(core, "MAX_ZIP_BYTES", 50_000)
    with pytest.raises(core.DemoError, match=r"big.zip: the zip unpacks to 100000 bytes, more than the 50000"):
        core.unpack_series(tmp_path / "big.zip", tmp_path / "big")
    (tmp_path / "not.zip").write_bytes(b"PK nothing")
    with pytest.raises(core.DemoError, match="not.zip: not a readable zip file"):
        core.unpack_series(tmp_path / "not.zip", tmp_path / "n")
