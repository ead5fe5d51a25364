"""Real models and files, built once per session with the project's own helpers: a tiny MedITok (as meditok-tokenizer's
tests make it), a tiny MedITok-AR model (meditok.ar.testing: a BPE tokenizer trained on the IU X-ray reports and a
random tiny Llama, extended as meditok-ar's tests do), the pydicom-data head CT, and the bad files of issue 16."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from pathlib import Path

import pytest

from meditok.data.testing import require

CT_NAME = "693_UNCI.dcm"  # the root README's ct_head_693: a 512x512 head CT in HU


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    import importlib.util

    from meditok.ar import MedITokAR
    from meditok.ar.testing import build_llama, iu_xray_reports, report_texts, train_text_tokenizer
    from meditok.tokenizer import MedITok

    require(importlib.util.find_spec("torchxrayvision") is not None, "torchxrayvision (IU reports) not installed")
    root = tmp_path_factory.mktemp("models")
    MedITok.from_config("tiny", seed=0).eval().save_pretrained(root / "tokenizer")
    text_tok = train_text_tokenizer(report_texts(iu_xray_reports()), root / "text_tok", vocab_size=1000)
    build_llama(root / "llama", text_tok, "tiny", seed=0)
    MedITokAR.from_pretrained(root / "llama", tokenizer=root / "tokenizer").save_pretrained(root / "merged")
    return {"tokenizer": root / "tokenizer", "ar": root / "merged"}


@pytest.fixture(scope="session")
def ct_path() -> Path:
    from meditok.data.samples import sample_paths

    found = [p for p in sample_paths("ct") if p.name == CT_NAME]
    require(bool(found), f"pydicom-data's {CT_NAME} not installed (pip install pydicom-data)")
    return Path(found[0])


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels around a few bytes of data (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, ct_path) -> dict[str, Path]:
    """Issue 16's bad uploads: a PDF renamed .dcm, a truncated DICOM, 60000x60000 declared pixels (DICOM and PNG)."""
    from meditok.data.testing import synthetic_dicom

    root = tmp_path_factory.mktemp("bad")
    files = {
        "pdf": (root / "report.dcm", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n" * 40),
        "truncated": (root / "truncated.dcm", ct_path.read_bytes()[: ct_path.stat().st_size // 2]),
        "huge_dicom": (root / "huge.dcm", synthetic_dicom(60000, 60000, b"\0" * 64)),
        "huge_png": (root / "huge.png", png_declaring(60000, 60000)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {key: path for key, (path, _) in files.items()}


@pytest.fixture(scope="session")
def nifti_4d(tmp_path_factory) -> Path:
    """A 4-D NIfTI (x, y, z, time) of real MR slices: the MNI152 T1 from nilearn's data, 3 time points."""
    import nibabel
    import numpy as np

    from meditok.data.samples import sample_paths

    mr = [p for p in sample_paths("mri") if str(p).endswith((".nii", ".nii.gz"))]
    require(bool(mr), "no NIfTI MR sample installed (pip install 'meditok-data[samples]')")
    volume = nibabel.load(mr[0])
    data = np.asarray(volume.dataobj, dtype=np.float32)[::4, ::4, ::4]
    stack = np.stack([data, data * 0.5, data * 0.25], axis=-1)
    out = tmp_path_factory.mktemp("nifti") / "mr_4d.nii.gz"
    nibabel.save(nibabel.Nifti1Image(stack, volume.affine @ np.diag([4, 4, 4, 1])), out)
    return out


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """`meditok ...` (meditok-tokenizer's CLI) in this process, from ``cwd``: (exit code, stdout, stderr)."""
    from meditok.tokenizer.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def cli_skip_reason(path: Path, weights: Path, tmp: Path) -> str:
    """What `meditok encode FILE` says about a file it cannot read (run from the file's folder, as a user would)."""
    code, _, err = run_cli(["encode", path.name, "--weights", str(weights), "-o", str(tmp / "codes.npz")], path.parent)
    assert code == 1, err
    reasons = [line[len("skipped ") :] for line in err.splitlines() if line.startswith(f"skipped {path.name}")]
    assert len(reasons) == 1, err
    return reasons[0]
