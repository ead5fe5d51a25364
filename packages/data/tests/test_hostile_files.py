"""One bad file never kills ``meditok-data index`` / ``shard`` / ``info`` (issue 12, point 4): a PNG header declaring
60000 x 60000, a file name that is not UTF-8, a NIfTI header declaring 30000^3 voxels in a 600-byte file (in a ``ct/``
folder), FIFOs, NumberOfFrames=1000000 on a one-frame DICOM, a DICOM whose Rows/Columns are smaller than its pixel
data, and a newline in a file name. Each is a counted skip naming the file and the reason, decided from the header;
the manifest and the shards hold exactly what the good files give; no log line is forged."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import dicom_file
from PIL import Image

from meditok.data.testing import synthetic_dicom

TIMEOUT = 120  # a FIFO opened by a reader blocks forever: the subprocess timeout turns that into a failure
CLI = [sys.executable, "-m", "meditok.data.cli", "-q"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit gray) and whose one IDAT is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _nifti_header_only(shape: tuple[int, ...]) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + b"\1" * 244  # 600 bytes: a header and a few voxels


GOOD_16 = np.arange(256, dtype=np.uint16).reshape(16, 16)

# name (relative to the folder) -> (content, the reason the skip must give)
HOSTILE = {
    "xray/bomb.png": (_png_header(60000, 60000), "too many pixels"),
    "ct/huge.nii": (_nifti_header_only((30000, 30000, 30000)), "NIfTI header declares 30000 x 30000 x 30000"),
    "mri/frames.dcm": (synthetic_dicom(16, 16, GOOD_16.tobytes(), frames=1000000), "pixel data holds 512 bytes"),
    "mri/small_rows.dcm": (synthetic_dicom(8, 8, GOOD_16.tobytes()), "a frame or more beyond what the header declares"),
    "xray/evil\nWARNING forged line.png": (_png_header(60000, 60000), "too many pixels"),
}
FIFOS = ["xray/pipe.png", "pipe"]  # one with a raster suffix, one that file_kind would sniff for DICOM magic


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(hostile: good files + every bad one, clean: the good files alone, at the same relative paths)."""
    hostile, clean = tmp_path / "hostile", tmp_path / "clean"
    for root in (hostile, clean):
        (root / "xray").mkdir(parents=True)
        (root / "mri").mkdir()
        (root / "ct").mkdir()
        Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)).save(
            root / "xray" / "good.png"
        )
        shutil.copy(dicom_file("CT_small.dcm"), root / "ct" / "good.dcm")
        (root / "mri" / "good.dcm").write_bytes(synthetic_dicom(16, 16, GOOD_16.tobytes()))
    for name, (content, _) in HOSTILE.items():
        (hostile / name).write_bytes(content)
    for name in FIFOS:
        os.mkfifo(hostile / name)
    with open(os.fsencode(hostile / "xray") + b"/latin1-\xe9.png", "wb") as handle:  # not UTF-8
        handle.write((clean / "xray" / "good.png").read_bytes())
    return hostile, clean


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def _rows(manifest: Path, root: Path) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    return [{**r, "path": str(Path(r["path"]).relative_to(root))} for r in rows]


def test_index_skips_and_counts_every_bad_file(folders: tuple[Path, Path], tmp_path: Path) -> None:
    hostile, clean = folders
    done = _run("index", hostile, "-o", tmp_path / "hostile.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _run("index", clean, "-o", tmp_path / "clean.jsonl")
    assert reference.returncode == 0, reference.stderr
    # The manifest holds exactly the good files' rows (3 files, one row each).
    assert _rows(tmp_path / "hostile.jsonl", hostile) == _rows(tmp_path / "clean.jsonl", clean)
    assert len(_rows(tmp_path / "clean.jsonl", clean)) == 3
    bad = len(HOSTILE) + len(FIFOS) + 1  # + the non-UTF-8 name
    assert f"{bad} skipped of {bad + 3}" in done.stdout, done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == bad, done.stderr
    for name, (_, reason) in HOSTILE.items():
        escaped = name.replace("\n", "\\n")
        assert any(escaped in w and reason in w for w in warnings), (name, warnings)
    for name in FIFOS:
        assert any(f"{name}: not a regular file (a FIFO)" in w for w in warnings), (name, warnings)
    assert any("latin1-\\udce9.png: file name is not valid UTF-8" in w for w in warnings), warnings
    # The newline in a name is escaped: no line of the output starts with the forged text.
    assert not any(line.startswith("WARNING forged line") for line in done.stderr.splitlines())


def test_shard_skips_and_counts_every_bad_row(folders: tuple[Path, Path], tmp_path: Path) -> None:
    hostile, clean = folders
    good = ["xray/good.png", "ct/good.dcm", "mri/good.dcm"]
    names = good[:1] + list(HOSTILE) + FIFOS + good[1:]
    manifest = tmp_path / "rows.jsonl"
    modality = {"xray": "xray", "ct": "ct", "mri": "mri"}
    manifest.write_text(
        "".join(
            json.dumps({"path": str(hostile / n), "modality": modality.get(n.split("/")[0], "other")}) + "\n"
            for n in names
        ),
        encoding="utf-8",
    )
    done = _run("shard", manifest, "-o", tmp_path / "shards", "--shard-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    bad = len(HOSTILE) + len(FIFOS)
    assert "3 samples in 2 shards" in done.stdout and f"{bad} skipped of {bad + 3}" in done.stdout, done.stdout
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert (index["attempted"], index["skipped"]) == (bad + 3, bad)


@pytest.mark.parametrize("name", [*HOSTILE, *FIFOS])
def test_info_gives_one_line(folders: tuple[Path, Path], name: str) -> None:
    hostile, _ = folders
    done = _run("info", hostile / name)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meditok-data: error:"), done.stderr
    reason = HOSTILE[name][1] if name in HOSTILE else "not a regular file (a FIFO)"
    assert name.replace("\n", "\\n") in lines[0] and reason in lines[0], lines[0]
