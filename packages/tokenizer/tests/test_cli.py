import numpy as np
import pytest
import torch
from PIL import Image

from meditok.tokenizer import MedITok
from meditok.tokenizer.cli import main
from meditok.tokenizer.preprocessing import preprocess, psnr, to_uint8


@pytest.fixture()
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(48, 40, 3), (30, 30), (64, 64, 4)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_encode_then_decode_equals_the_api(tmp_path, pngs, tiny_weights, capsys):
    weights = str(tiny_weights["directory"])
    codes_file = tmp_path / "codes.npz"
    assert (
        main(
            [
                "encode",
                *map(str, pngs),
                "--weights",
                weights,
                "--size",
                "32",
                "--batch-size",
                "2",
                "-o",
                str(codes_file),
            ]
        )
        == 0
    )
    assert "wrote codes of 3 image(s)" in capsys.readouterr().out
    tok = MedITok.from_pretrained(weights)
    data = np.load(codes_file)
    assert [str(n) for n in data["names"]] == ["img0.png", "img1.png", "img2.png"]
    for i, path in enumerate(pngs):
        expected = tok.encode(preprocess(Image.open(path), size=32)).reshape(8, 2, 2)
        assert data[f"codes_{i}"].dtype == np.uint16
        assert np.array_equal(data[f"codes_{i}"], expected.numpy())
    out_dir = tmp_path / "decoded"
    assert main(["decode", str(codes_file), "--weights", weights, "-o", str(out_dir)]) == 0
    decoded = np.asarray(Image.open(out_dir / "img1.png"))
    expected = to_uint8(tok.decode(torch.from_numpy(data["codes_1"].astype(np.int64)).unsqueeze(0)))[0]
    assert np.array_equal(decoded, expected)


def test_reconstruct_writes_side_by_side_and_prints_psnr(tmp_path, pngs, tiny_weights, capsys):
    weights = str(tiny_weights["bare"])
    assert main(["reconstruct", str(pngs[0]), "--weights", weights, "--size", "32", "-o", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    panel = np.asarray(Image.open(tmp_path / "r" / "img0_recon.png"))
    assert panel.shape == (32, 64, 3)
    x = preprocess(Image.open(pngs[0]), size=32)
    recon = MedITok.from_pretrained(weights).reconstruct(x)
    assert np.array_equal(panel[:, 32:], to_uint8(recon)[0])
    assert f"PSNR {psnr(x, recon):.2f} dB" in out


def test_native_size_keeps_non_square_grids(tmp_path, pngs, tiny_weights):
    codes_file = tmp_path / "codes.npz"
    assert (
        main(
            [
                "encode",
                str(pngs[0]),
                "--weights",
                str(tiny_weights["bare"]),
                "--resize",
                "native",
                "-o",
                str(codes_file),
            ]
        )
        == 0
    )
    assert np.load(codes_file)["codes_0"].shape == (8, 3, 2)  # 48x40 -> 48x32 pixels -> 3x2 tokens
    assert main(["decode", str(codes_file), "--weights", str(tiny_weights["bare"]), "-o", str(tmp_path / "d")]) == 0
    assert Image.open(tmp_path / "d" / "img0.png").size == (32, 48)


def test_convert_and_info(tmp_path, tiny_weights, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(tiny_weights["training"]), str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    n = MedITok.from_pretrained(out).num_parameters()
    assert f"parameters:   {n:,}" in text and "8 x 4096 codes x 8 dims" in text


def test_errors_are_one_line_messages(tmp_path, pngs, tiny_weights, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    rc = main(["encode", str(not_image), "--weights", str(tiny_weights["bare"]), "-o", str(tmp_path / "c.npz")])
    assert rc == 1 and f"{not_image}: not a recognised image format" in capsys.readouterr().err
    rc = main(
        ["encode", str(tmp_path / "absent.png"), "--weights", str(tiny_weights["bare"]), "-o", str(tmp_path / "c.npz")]
    )
    assert rc == 1 and "absent.png: no such file" in capsys.readouterr().err
    bad_codes = tmp_path / "bad.npz"
    np.savez(bad_codes, something=np.zeros(3))
    rc = main(["decode", str(bad_codes), "--weights", str(tiny_weights["bare"]), "-o", str(tmp_path / "d")])
    assert rc == 1 and "not a meditok codes file" in capsys.readouterr().err
    rc = main(["info", str(pngs[0])])
    assert rc == 1 and "not a PyTorch checkpoint" in capsys.readouterr().err


def test_dicom_and_nifti_through_meditok_data(tmp_path, tiny_weights, capsys):
    from meditok.data import normalize_intensity, read_image
    from meditok.data.samples import sample_paths
    from meditok.data.testing import require

    ct_dicoms = [p for p in sample_paths("ct") if p.suffix == ".dcm"]
    mri_niftis = [p for p in sample_paths("mri") if p.name.endswith(".nii.gz")]
    # pydicom-data is in the [test] extra; the NIfTI MRIs come from nilearn (meditok-data[samples]) or the Debian
    # package mricron-data (.ci/run installs it): skipped on a machine without either, a failure in CI.
    require(bool(ct_dicoms), "no CT DICOM sample: pip install pydicom-data")
    require(bool(mri_niftis), "no NIfTI MRI sample: pip install nilearn, or apt-get install mricron-data")
    ct_dicom, mri_nifti = ct_dicoms[0], mri_niftis[0]
    out = tmp_path / "r"
    args = [
        "reconstruct",
        str(ct_dicom),
        str(mri_nifti),
        "--weights",
        str(tiny_weights["bare"]),
        "--size",
        "64",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    assert "mean PSNR over 2 images" in capsys.readouterr().out
    panel = np.asarray(Image.open(out / f"{ct_dicom.stem}_recon.png"))
    assert panel.shape == (64, 128, 3)
    # The left half is the CT windowed by meditok-data (not a raw min-max of the stored integers).
    expected = preprocess((normalize_intensity(read_image(ct_dicom)) + 1) / 2, size=64)
    assert np.array_equal(panel[:, :64], to_uint8(expected)[0])


def test_dicom_without_meditok_data_names_the_package(tmp_path, tiny_weights, monkeypatch, capsys):
    import sys

    fake = tmp_path / "scan.dcm"
    fake.write_bytes(b"\0" * 128 + b"DICM")
    monkeypatch.setitem(sys.modules, "meditok.data", None)
    assert main(["encode", str(fake), "--weights", str(tiny_weights["bare"]), "-o", str(tmp_path / "c.npz")]) == 1
    assert "needs meditok-data (pip install meditok-data)" in capsys.readouterr().err


def test_export_reads_a_training_checkpoint_without_deepspeed(tmp_path, tiny, capsys, monkeypatch):
    """`meditok export` on the checkpoint layout the trainer writes (ZeRO 0-2: the engine's module state in
    generator/mp_rank_00_model_states.pt): no DeepSpeed import, teacher adapters dropped, `latest` followed."""
    import json
    import sys

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # any `import deepspeed` now raises ImportError
    step = tmp_path / "run" / "checkpoints" / "step-00000004"
    (step / "generator").mkdir(parents=True)
    module = {f"core.{k}": v.clone() for k, v in tiny.state_dict().items()}
    module.update({"text_fc_norm.weight": torch.ones(64), "text_projection.weight": torch.zeros(64, 64)})
    torch.save({"module": module, "ds_version": "0.19.8"}, step / "generator" / "mp_rank_00_model_states.pt")
    (step / "trainer_state.json").write_text(
        json.dumps({"step": 4, "stage": 1, "world_size": 1, "model_config": tiny.config.to_dict()})
    )
    (step.parent / "latest").write_text(step.name)

    assert main(["export", str(step.parent), str(tmp_path / "release")]) == 0
    assert "stage 1, step 4" in capsys.readouterr().out
    exported = MedITok.from_pretrained(tmp_path / "release")
    for key, value in tiny.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value), key

    assert main(["export", str(tmp_path / "run"), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "not a MedITok training checkpoint" in err and "trainer_state.json" in err


# ------------------------------------------------------------------------------------ user mistakes (issue 12, 13)


def _bomb_png(path, width=60000, height=60000):
    """A valid 1x1 PNG whose IHDR then declares width x height (a decompression-bomb header)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture()
def no_weights_load(monkeypatch):
    """Fails the test if the command loads weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the inputs were checked")

    monkeypatch.setattr(MedITok, "from_pretrained", classmethod(refuse))


def test_inputs_are_checked_before_the_weights_load(tmp_path, pngs, tiny_weights, no_weights_load, capsys):
    weights = str(tiny_weights["bare"])
    out = str(tmp_path / "r")
    rc = main(["reconstruct", str(pngs[0]), str(tmp_path / "typo.png"), "--weights", weights, "-o", out])
    err = capsys.readouterr().err
    assert rc == 1 and err.strip() == f"meditok: error: {tmp_path / 'typo.png'}: no such file or directory"
    rc = main(["reconstruct", str(pngs[0]), "--weights", str(tmp_path / "absent.pth"), "-o", out])
    assert rc == 1 and "absent.pth: no such file or directory (--weights)" in capsys.readouterr().err
    rc = main(["encode", str(pngs[0]), "--weights", weights, "--size", "17", "-o", str(tmp_path / "c.npz")])
    assert rc == 1 and "multiples of 16" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    rc = main(["encode", str(pngs[0]), "--weights", weights, "-o", str(tmp_path / "afile" / "sub" / "c.npz")])
    assert rc == 1 and "afile is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    rc = main(["encode", str(tmp_path / "empty"), "--weights", weights, "-o", str(tmp_path / "c.npz")])
    assert rc == 1 and "empty: directory holds no image files" in capsys.readouterr().err
    # Every file unreadable: all counted, then one error, still before the weights.
    bomb = _bomb_png(tmp_path / "bomb.png")
    rc = main(["encode", str(bomb), "--weights", weights, "-o", str(tmp_path / "c.npz")])
    err = capsys.readouterr().err
    assert rc == 1 and f"skipped {bomb}: image too large" in err and "no readable image among 1 file(s)" in err
    assert not (tmp_path / "c.npz").exists() and not (tmp_path / "r").exists()


def test_a_directory_is_taken_recursively(tmp_path, tiny_weights, capsys):
    rng = np.random.default_rng(3)
    root = tmp_path / "scans"
    (root / "sub").mkdir(parents=True)
    arrays = {
        "a.png": rng.integers(0, 256, (40, 40), dtype=np.uint8),
        "sub/b.png": rng.integers(0, 256, (32, 48, 3), dtype=np.uint8),
    }
    for name, array in arrays.items():
        Image.fromarray(array).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_text("skipped: hidden")
    codes_file = tmp_path / "codes.npz"
    weights = str(tiny_weights["bare"])
    assert main(["encode", str(root), "--weights", weights, "--size", "32", "-o", str(codes_file)]) == 0
    captured = capsys.readouterr()
    assert "wrote codes of 2 image(s)" in captured.out
    assert "1 file(s) without an image suffix ignored" in captured.err
    data = np.load(codes_file)
    assert [str(n) for n in data["names"]] == ["scans/a.png", "scans/sub/b.png"]
    tok = MedITok.from_pretrained(weights)
    for i, array in enumerate(arrays.values()):
        expected = tok.encode(preprocess(array, size=32)).reshape(8, 2, 2).numpy()
        assert np.array_equal(data[f"codes_{i}"], expected)
    # decode mirrors the folders; names that climb out of the output folder keep their last part only
    assert main(["decode", str(codes_file), "--weights", weights, "-o", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "scans" / "sub" / "b.png").is_file() and (tmp_path / "d" / "scans" / "a.png").is_file()
    hostile = tmp_path / "hostile.npz"
    np.savez(
        hostile, names=np.array(["../../escape.png"]), format=np.array("meditok-codes-v1"), codes_0=data["codes_0"]
    )
    assert main(["decode", str(hostile), "--weights", weights, "-o", str(tmp_path / "h")]) == 0
    assert (tmp_path / "h" / "escape.png").is_file() and not (tmp_path / "escape.png").exists()


def test_one_bad_file_is_skipped_and_counted(tmp_path, pngs, tiny_weights, capsys):
    import nibabel as nib

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    bomb = _bomb_png(tmp_path / "bomb.png")
    volume = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32) * 100
    volume[3, 3, 1] = np.nan
    nan_nifti = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), nan_nifti)
    weights = str(tiny_weights["bare"])
    codes_file = tmp_path / "codes.npz"
    args = ["encode", str(pngs[0]), str(bad), str(bomb), str(nan_nifti), str(pngs[1]), "--weights", weights]
    assert main([*args, "--size", "32", "-o", str(codes_file)]) == 0
    captured = capsys.readouterr()
    assert "wrote codes of 2 image(s)" in captured.out
    lines = captured.err.splitlines()
    assert f"skipped {bad}: not a recognised image format" in captured.err
    assert any(f"skipped {bomb}: image too large" in line for line in lines)
    assert any(f"skipped {nan_nifti}:" in line and "non-finite" in line for line in lines)
    assert "skipped 3 of 5 file(s)" in captured.err and "Traceback" not in captured.err
    data = np.load(codes_file)
    assert [str(n) for n in data["names"]] == ["img0.png", "img1.png"]
    tok = MedITok.from_pretrained(weights)
    expected = tok.encode(preprocess(Image.open(pngs[1]), size=32)).reshape(8, 2, 2).numpy()
    assert np.array_equal(data["codes_1"], expected)  # the good files' codes are unchanged by the skips
    # --strict stops at the first and writes nothing
    strict_file = tmp_path / "strict.npz"
    assert main([*args, "--size", "32", "--strict", "-o", str(strict_file)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: not a recognised image format" in err and "--strict" in err and not strict_file.exists()


def test_squash_aspect_warning_and_alpha_note_are_said_once(tmp_path, pngs, tiny_weights, capsys):
    rng = np.random.default_rng(1)
    wide = []
    for i in range(2):
        wide.append(tmp_path / f"wide{i}.png")
        Image.fromarray(rng.integers(0, 256, (37, 100), dtype=np.uint8)).save(wide[-1])
    rgba2 = tmp_path / "rgba2.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(rgba2)
    weights = str(tiny_weights["bare"])
    inputs = [*map(str, wide), str(pngs[2]), str(rgba2), str(pngs[0])]
    assert main(["encode", *inputs, "--weights", weights, "--size", "32", "-o", str(tmp_path / "c.npz")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "squashed to 32x32" in line]
    assert len(warnings) == 1 and str(wide[0]) in warnings[0] and "100x37" in warnings[0]
    assert "--resize pad or --resize native" in warnings[0]
    assert "2 image(s) squashed by more than 2x" in err
    alpha = [line for line in err.splitlines() if "alpha channel" in line]
    assert len(alpha) == 1 and str(pngs[2]) in alpha[0] and "alpha dropped from 2 image(s)" in err
    # 48x40 (pngs[0]) is within the limit; pad keeps the aspect ratio, so no warning there
    assert (
        main(
            ["encode", *inputs, "--weights", weights, "--size", "32", "--resize", "pad", "-o", str(tmp_path / "p.npz")]
        )
        == 0
    )
    assert "squashed" not in capsys.readouterr().err


def test_a_3d_nifti_says_which_slice_is_used(tmp_path, tiny_weights, capsys):
    import nibabel as nib

    from meditok.data import load_unit_image, read_2d

    volume = np.random.default_rng(2).random((32, 32, 5)).astype(np.float32) * 100
    path = tmp_path / "volume3d.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    out = tmp_path / "r"
    assert main(["reconstruct", str(path), "--weights", str(tiny_weights["bare"]), "--size", "32", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert read_2d(path).metadata["slice"] == 2  # the contract's middle axial slice of 5
    assert f"note: {path} is a volume; using its middle axial slice (index 2)" in captured.err
    panel = np.asarray(Image.open(out / "volume3d_slice2_recon.png"))
    expected = preprocess(load_unit_image(path)[0], size=32)
    assert np.array_equal(panel[:, :32], to_uint8(expected)[0])
