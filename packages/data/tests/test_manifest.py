from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import dicom_file, sample

from meditok.data import (
    ManifestRow,
    MedicalImageError,
    ScanStats,
    index_directory,
    load_row,
    read_manifest,
    write_ct_png,
    write_manifest,
)
from meditok.data.cli import main


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "dicom").mkdir(parents=True)
    shutil.copy(dicom_file("CT_small.dcm"), root / "dicom" / "ct.dcm")
    shutil.copy(dicom_file("emri_small.dcm"), root / "dicom" / "NOSUFFIX")  # PACS-style name, found by magic
    (root / "fundus").mkdir()
    shutil.copy(sample("fundus_microaneurysms"), root / "fundus" / "hrf.png")
    (root / "mri").mkdir()
    shutil.copy(sample("mr_mni152_t1"), root / "mri" / "mni.nii.gz")
    (root / "readme.txt").write_text("not an image")
    broken = root / "fundus" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return root


def test_index_directory_rows(tree: Path) -> None:
    stats = ScanStats()
    rows = list(index_directory(tree, slice_step=10, progress=False, stats=stats))
    by_kind: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_kind.setdefault(row.kind, []).append(row)
    assert [r.modality for r in by_kind["image"]] == ["ct", "fundus"]
    assert by_kind["image"][1].shape == [102, 102]
    assert len(by_kind["frame"]) == 1 and by_kind["frame"][0].modality == "mri"  # 10 frames, step 10
    slices = by_kind["slice"]
    assert [r.index for r in slices] == list(range(0, 189, 10))
    assert all(r.shape == [233, 197] and r.modality == "mri" and r.plane == "axial" for r in slices)
    assert stats.skipped == 1 and stats.ignored == 1 and stats.attempted == 5
    assert stats.summary() == "1 skipped of 5"
    assert "broken.png" in stats.skipped_files[0][0]


def test_index_strict_raises(tree: Path) -> None:
    with pytest.raises(MedicalImageError, match="broken.png"):
        list(index_directory(tree, strict=True, progress=False))


def test_index_per_volume(tree: Path) -> None:
    rows = [r for r in index_directory(tree, per="volume", progress=False) if r.kind == "volume"]
    assert len(rows) == 1 and rows[0].shape == [197, 233, 189]
    image = load_row(rows[0])
    assert image.pixels.shape == (233, 197) and image.metadata["slice"] == 94


def test_cli_index_round_trip(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "manifest.jsonl"
    assert main(["-q", "index", str(tree), "-o", str(out), "--slice-step", "50"]) == 0
    printed = capsys.readouterr().out
    assert "1 skipped of 5" in printed
    rows = read_manifest(out)
    assert len(rows) == 2 + 1 + 4  # ct + fundus, every 50th of 10 MR frames, of 189 MNI slices
    loaded = [load_row(r) for r in rows]
    assert loaded[-1].pixels.shape == (233, 197)
    assert all(img.num_frames == 1 for img in loaded)
    assert main(["-q", "index", str(tree), "-o", str(out), "--strict"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_cli_index_rows_resolve_from_the_manifest_folder(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory named relative to the current folder and a manifest written elsewhere: every row still opens (the
    rows were once written relative to the current folder, and read relative to the manifest's)."""
    work = tmp_path / "work"
    shutil.copytree(tree, work / "scans")
    monkeypatch.chdir(work)
    for out, expected_prefix in [(work / "runs" / "m.jsonl", str(work / "scans")), (work / "m.jsonl", "scans/")]:
        assert main(["-q", "index", "scans", "-o", str(out.relative_to(work)), "--slice-step", "50"]) == 0
        raw = [json.loads(line)["path"] for line in out.read_text().splitlines()]
        assert raw and all(p.startswith(expected_prefix) for p in raw)
        monkeypatch.chdir(tmp_path)  # reading does not depend on the current folder
        assert len([load_row(r) for r in read_manifest(out)]) == len(raw) == 7
        monkeypatch.chdir(work)


def test_reference_csv(tmp_path: Path) -> None:
    hu = np.clip(np.asarray(load_row(ManifestRow(str(dicom_file("CT_small.dcm")), "ct")).pixels), -1024, None)
    images = tmp_path / "2d" / "cls"
    (images / "ct").mkdir(parents=True)
    write_ct_png(hu, images / "ct" / "slice.png")
    (images / "fundus").mkdir()
    shutil.copy(sample("fundus_microaneurysms"), images / "fundus" / "hrf.png")
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text(
        "identifier,caption,modality,dataset_name,sub_modality\n"
        "2d/cls/ct/slice.png,Axial CT of the head.,ct,demo_ct,head\n"
        "2d/cls/fundus/hrf.png,,fundus,hrf,\n"
    )
    rows = read_manifest(csv_path)
    assert [r.modality for r in rows] == ["ct", "fundus"]
    assert rows[0].ct_bias == 1024 and rows[1].ct_bias == 0
    assert rows[0].caption_or_template() == "Axial CT of the head."
    assert rows[1].caption_or_template() == "A fundus image"
    assert rows[0].extra["sub_modality"] == "head" and rows[0].dataset_name == "demo_ct"
    np.testing.assert_array_equal(load_row(rows[0]).pixels, hu)  # HU restored through the reference's +1024 PNG
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nx.png,y\n")
    with pytest.raises(MedicalImageError, match="lacks required column"):
        read_manifest(bad)


def test_manifest_relative_paths_and_errors(tmp_path: Path) -> None:
    shutil.copy(dicom_file("CT_small.dcm"), tmp_path / "a.dcm")
    count = write_manifest([ManifestRow("a.dcm", "ct", caption="CT slice")], tmp_path / "m.jsonl")
    assert count == 1
    line = json.loads((tmp_path / "m.jsonl").read_text())
    assert line == {"path": "a.dcm", "modality": "ct", "kind": "image", "caption": "CT slice"}
    rows = read_manifest(tmp_path / "m.jsonl")
    assert rows[0].path == str(tmp_path / "a.dcm") and load_row(rows[0]).pixels.shape == (128, 128)
    (tmp_path / "bad.jsonl").write_text('{"path": "a.dcm"}\n{oops\n')
    with pytest.raises(MedicalImageError, match="bad.jsonl: line 2: bad manifest row"):
        read_manifest(tmp_path / "bad.jsonl")


@pytest.mark.parametrize(
    "modality, caption",
    [("ct", "A CT image"), ("mri", "A MRI image"), ("xray", "A X-ray image"), ("dermoscopy", "A dermoscopy image")],
)
def test_template_captions(modality: str, caption: str) -> None:
    assert ManifestRow("x.png", modality).caption_or_template() == caption
