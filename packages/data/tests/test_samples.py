from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require

from meditok.data import ImageDataset, Preprocess, read_manifest
from meditok.data.cli import main
from meditok.data.samples import SAMPLE_MODALITIES, find_samples, missing_modalities, missing_sources, sample_paths


def test_every_modality_has_a_real_source() -> None:
    require(not missing_sources(), f"missing sample sources: {missing_sources()}")
    assert missing_modalities() == []
    assert {s.modality for s in find_samples()} >= set(SAMPLE_MODALITIES)


@pytest.mark.parametrize("modality", SAMPLE_MODALITIES)
def test_sample_paths_per_modality(modality: str) -> None:
    paths = sample_paths(modality)
    require(bool(paths), f"no {modality} sample installed")
    assert all(p.exists() for p in paths)


def test_assembled_samples_manifest(samples_dir: Path) -> None:
    rows = read_manifest(samples_dir / "manifest.jsonl")
    modalities = {r.modality for r in rows}
    require(modalities >= set(SAMPLE_MODALITIES), f"modalities present: {sorted(modalities)}")
    assert all(Path(r.path).is_relative_to(samples_dir) and Path(r.path).exists() for r in rows)
    assert all("licence" in r.extra and r.dataset_name for r in rows)
    dataset = ImageDataset(samples_dir / "manifest.jsonl", Preprocess(size=32), shuffle=False, strict=True)
    seen: dict[str, int] = {}
    for sample in dataset:
        assert sample["image"].shape == (3, 32, 32)
        seen[sample["modality"]] = seen.get(sample["modality"], 0) + 1
    assert (
        set(seen) == modalities and sum(seen.values()) == len(rows) and dataset.summary() == f"0 skipped of {len(rows)}"
    )
    # The InVesalius CT project (Debian invesalius-examples, installed by .ci/run) is converted to NIfTI; checked last
    # so that a machine without the Debian package still tests everything above.
    cranium = samples_dir / "ct" / "ct_cranium.nii.gz"
    require("ct_cranium" in {s.name for s in find_samples("ct")}, "ct_cranium: apt-get install invesalius-examples")
    assert cranium.exists()
    assert any(Path(r.path) == cranium for r in rows)  # its slices were read through the manifest above


def test_cli_samples_and_shard(samples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    assert main(["-q", "samples", "-o", str(out), "--dermoscopy-limit", "4"]) == 0
    printed = capsys.readouterr().out
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert f"{len(lines)} images" in printed and "dermoscopy 4" in printed
    first = json.loads(lines[0])
    assert {"path", "modality", "kind"} <= first.keys()
    assert (
        main(
            [
                "-q",
                "shard",
                str(out / "manifest.jsonl"),
                "-o",
                str(tmp_path / "sh"),
                "--shard-size",
                "16",
                "--max-side",
                "128",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"{len(lines)} samples in" in printed and "0 skipped of" in printed
    shapes = [s["image"].shape for s in ImageDataset(tmp_path / "sh", Preprocess(size=16))]
    assert len(shapes) == len(lines)
    assert main(["info", str(out / "ct" / "ct_small.dcm")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modality"] == "ct" and info["shape"] == [128, 128] and info["min"] < 0
