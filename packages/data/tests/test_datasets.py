from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dicom_file
from torch.utils.data import DataLoader

from meditok.data import (
    ImageDataset,
    ImageTextDataset,
    ManifestRow,
    MedicalImageError,
    Preprocess,
    ResumableLoader,
    load_row,
    write_shards,
)
from meditok.data.samples import dermoscopy_patches
from meditok.data.shards import ShardIndex, decode_image_sample, iter_shard

SMALL = Preprocess(size=32)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[ManifestRow]:
    """26 real images: 2 CT, 10 MR frames, 14 dermoscopy patches."""
    root = tmp_path_factory.mktemp("rows")
    result = [ManifestRow(str(dicom_file("CT_small.dcm")), "ct", caption="Abdominal CT.")]
    result.append(ManifestRow(str(dicom_file("693_UNCI.dcm")), "ct"))
    result += [ManifestRow(str(dicom_file("emri_small.dcm")), "mri", "frame", index=i) for i in range(10)]
    patches = dermoscopy_patches(14)
    if len(patches) < 14:
        patches = [
            Path(dicom_file("MR_small.dcm"))
        ] * 14  # keeps the count; the dermoscopy requirement is tested elsewhere
    for i, patch in enumerate(patches):
        target = root / f"p{i}{patch.suffix}"
        shutil.copy(patch, target)
        result.append(ManifestRow(str(target), "dermoscopy"))
    return result


@pytest.fixture()
def rows_with_corrupt(rows: list[ManifestRow], tmp_path: Path) -> list[ManifestRow]:
    broken = tmp_path / "corrupt.dcm"
    broken.write_bytes(dicom_file("CT_small.dcm").read_bytes()[:5000])
    return rows[:5] + [ManifestRow(str(broken), "ct")] + rows[5:]


def test_one_corrupt_file_is_skipped_and_counted(
    rows_with_corrupt: list[ManifestRow], caplog: pytest.LogCaptureFixture
) -> None:
    dataset = ImageDataset(rows_with_corrupt, SMALL, shuffle=False)
    samples = list(dataset)
    assert len(samples) == len(rows_with_corrupt) - 1
    assert dataset.skipped == 1 and dataset.attempted == len(rows_with_corrupt)
    assert dataset.summary() == f"1 skipped of {len(rows_with_corrupt)}"
    assert sum("corrupt.dcm" in r.message for r in caplog.records) == 1
    list(dataset)  # a second epoch logs nothing new but counts again
    assert sum("corrupt.dcm" in r.message for r in caplog.records) == 1
    assert dataset.skipped == 2


def test_counts_are_shared_by_dataloader_workers(rows_with_corrupt: list[ManifestRow], tmp_path: Path) -> None:
    log_file = tmp_path / "skipped.txt"
    dataset = ImageDataset(rows_with_corrupt, SMALL, skip_log=log_file)
    batches = list(DataLoader(dataset, batch_size=4, num_workers=2))
    assert sum(len(b["key"]) for b in batches) == len(rows_with_corrupt) - 1
    assert dataset.skipped == 1 and dataset.attempted == len(rows_with_corrupt)
    assert "corrupt.dcm" in log_file.read_text()


def test_strict_mode_raises(rows_with_corrupt: list[ManifestRow]) -> None:
    with pytest.raises(MedicalImageError, match="corrupt.dcm"):
        list(ImageDataset(rows_with_corrupt, SMALL, shuffle=False, strict=True))


def test_image_dataset_output(rows: list[ManifestRow]) -> None:
    sample = next(iter(ImageDataset(rows, Preprocess(), shuffle=False)))
    assert sample["image"].shape == (3, 256, 256) and sample["image"].dtype == torch.float32
    assert -1 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1
    assert sample["modality"] == "ct"


def test_image_text_captions(rows: list[ManifestRow]) -> None:
    samples = {s["key"]: s for s in ImageTextDataset(rows[:3], SMALL, shuffle=False)}
    assert samples[rows[0].key]["caption"] == "Abdominal CT."
    assert samples[rows[1].key]["caption"] == "A CT image"
    assert samples[rows[2].key]["caption"] == "A MRI image"


def test_shards_preserve_physical_values(rows: list[ManifestRow], tmp_path: Path) -> None:
    index = write_shards(rows, tmp_path / "shards", shard_size=8, progress=False)
    assert index.total == len(rows) and [s["count"] for s in index.shards] == [8, 8, 8, 2]
    decoded = [decode_image_sample(raw)[0] for path in index.paths() for raw in iter_shard(path)]
    for row, image in zip(rows, decoded):
        np.testing.assert_array_equal(image.pixels, load_row(row).pixels)  # HU incl. negative values, RGB, uint16
        assert image.modality == row.modality
    assert decoded[1].pixels.min() < -1024  # 693 has padding below -1024: stored losslessly with the offset


def _epoch_keys(source: Path, world: int, workers: int, epoch: int = 0) -> list[list[str]]:
    per_rank = []
    for rank in range(world):
        dataset = ImageDataset(source, SMALL, rank=rank, world_size=world, seed=7)
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=3, num_workers=workers)
        per_rank.append([key for batch in loader for key in batch["key"]])
    return per_rank


def test_shards_2_ranks_x_2_workers_exactly_once(rows: list[ManifestRow], tmp_path: Path) -> None:
    write_shards(rows, tmp_path / "shards", shard_size=3, progress=False)  # 9 shards over 4 streams
    per_rank = _epoch_keys(tmp_path / "shards", world=2, workers=2)
    everything = per_rank[0] + per_rank[1]
    assert Counter(everything) == Counter(r.key for r in rows)  # each sample exactly once
    assert not set(per_rank[0]) & set(per_rank[1])
    assert _epoch_keys(tmp_path / "shards", 2, 2, epoch=1) != per_rank  # a new epoch reshuffles ...
    assert Counter(sum(_epoch_keys(tmp_path / "shards", 2, 2, epoch=1), [])) == Counter(everything)  # ... still once


def test_manifest_2_ranks_x_2_workers_exactly_once(rows: list[ManifestRow]) -> None:
    keys = []
    for rank in range(2):
        dataset = ImageDataset(rows, SMALL, rank=rank, world_size=2)
        keys += [k for b in DataLoader(dataset, batch_size=4, num_workers=2) for k in b["key"]]
    assert Counter(keys) == Counter(r.key for r in rows)


@pytest.mark.parametrize("source_kind", ["shards", "manifest"])
def test_resume_mid_epoch(rows: list[ManifestRow], tmp_path: Path, source_kind: str) -> None:
    source: object = rows
    if source_kind == "shards":
        write_shards(rows, tmp_path / "shards", shard_size=4, progress=False)
        source = tmp_path / "shards"
    loader = ResumableLoader(ImageDataset(source, SMALL, seed=3), batch_size=2, num_workers=2)  # type: ignore[arg-type]
    first = []
    for step, batch in enumerate(loader):
        first += batch["key"]
        if step == 4:
            break
    state = json.loads(json.dumps(loader.state_dict()))  # survives a checkpoint file
    resumed = ResumableLoader(ImageDataset(source, SMALL, seed=3), batch_size=2, num_workers=2)  # type: ignore[arg-type]
    resumed.load_state_dict(state)
    rest = [k for batch in resumed for k in batch["key"]]
    assert len(first) == 10
    assert Counter(first + rest) == Counter(r.key for r in rows)
    assert Counter(k for batch in resumed for k in batch["key"]) == Counter(r.key for r in rows)  # next pass: all


def test_shard_writer_resumes_after_interruption(rows: list[ManifestRow], tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(rows, out, shard_size=5, progress=False)
    complete = [(p.name, p.read_bytes()) for p in ShardIndex.load(out).paths()]
    # Simulate a crash after 2 shards: keep them and the partial index, drop the rest.
    (out / "index.json").unlink()
    for name, _ in complete[2:]:
        (out / name).unlink()
    (out / "index.partial.json").write_text(
        json.dumps(
            {
                "kind": "images",
                "shards": [{"name": n, "count": 5} for n, _ in complete[:2]],
                "rows_done": 10,
                "skipped": 0,
                "attempted": 10,
            }
        )
    )
    with pytest.raises(MedicalImageError, match="interrupted job"):
        ImageDataset(out)
    index = write_shards(rows, out, shard_size=5, resume=True, progress=False)
    assert [(p.name, p.read_bytes()) for p in index.paths()] == complete


def test_nifti_with_one_nan_voxel_is_a_counted_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12.1: one NaN voxel in a real NIfTI is skipped and counted (manifest rows and shards), never an all-NaN
    image; the good volume's sample is the same as without the bad one."""
    import nibabel as nib

    volume = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32) * 400
    poisoned = volume.copy()
    poisoned[3, 4, 1] = np.nan  # in the middle axial slice, the one read
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "good.nii.gz")
    nib.save(nib.Nifti1Image(poisoned, np.eye(4)), tmp_path / "nan.nii.gz")
    good = ManifestRow(str(tmp_path / "good.nii.gz"), "mri")
    rows = [good, ManifestRow(str(tmp_path / "nan.nii.gz"), "mri")]
    alone = list(ImageDataset([good], SMALL, shuffle=False))
    dataset = ImageDataset(rows, SMALL, shuffle=False)
    samples = list(dataset)
    assert dataset.summary() == "1 skipped of 2"
    assert len(samples) == 1 and torch.isfinite(samples[0]["image"]).all()
    assert torch.equal(samples[0]["image"], alone[0]["image"])
    assert any("nan.nii.gz" in r.message and "1 non-finite pixel" in r.message for r in caplog.records)
    index = write_shards(rows, tmp_path / "shards", shard_size=4, progress=False)
    assert (index.attempted, index.skipped, index.total) == (2, 1, 1)
    from_shards = ImageDataset(tmp_path / "shards", SMALL, shuffle=False)
    assert len(list(from_shards)) == 1 and from_shards.skipped == 0
