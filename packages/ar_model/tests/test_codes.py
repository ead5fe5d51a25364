"""The code-array format (meditok.ar.codes): shards written, validated, merged and streamed back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from meditok.ar.codes import CodesDataset, load_code_table, merge_code_folders, write_code_shards
from meditok.ar.layout import CODEBOOK_SIZE, NUM_CODEBOOKS
from meditok.data import MedicalImageError, ShardIndex
from meditok.tokenizer import MedITokConfig


def _items(n: int, seed: int = 0) -> list[tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 4096, size=(8, 4, 4)), {"modality": "ct", "caption": f"c{i}"}) for i in range(n)]


def test_layout_matches_the_tokenizer():
    config = MedITokConfig()
    assert (NUM_CODEBOOKS, CODEBOOK_SIZE) == (config.num_codebooks, config.codebook_size) == (8, 4096)


def test_codes_dataset(tmp_path: Path) -> None:
    items = _items(10)
    write_code_shards(items, tmp_path / "codes", shard_size=3)
    assert [s["count"] for s in ShardIndex.load(tmp_path / "codes").shards] == [3, 3, 3, 1]
    flat = {s["caption"]: s for s in CodesDataset(tmp_path / "codes", shuffle=False)}
    assert len(flat) == 10
    sample = flat["c4"]
    assert sample["codes"].dtype == torch.int64 and sample["codes"].shape == (8, 16)
    assert torch.equal(sample["codes"], torch.from_numpy(items[4][0].reshape(8, 16)))
    assert sample["grid"] == (4, 4) and sample["modality"] == "ct"
    grid = next(iter(CodesDataset(tmp_path / "codes", grid=True, shuffle=False)))
    assert grid["codes"].shape == (8, 4, 4)
    batch = next(iter(DataLoader(CodesDataset(tmp_path / "codes"), batch_size=4)))
    assert batch["codes"].shape == (4, 8, 16)
    with pytest.raises(MedicalImageError, match=r"codes of shape \(4, 16\): expected \[8, h\*w\]"):
        write_code_shards([(np.zeros((4, 16)), {})], tmp_path / "bad")
    with pytest.raises(MedicalImageError, match="outside"):
        write_code_shards([(np.full((8, 4), 4096), {})], tmp_path / "bad2")
    (tmp_path / "img").mkdir()
    ShardIndex(tmp_path / "img", [], "images").save()
    with pytest.raises(MedicalImageError, match="holds images, not codes"):
        CodesDataset(tmp_path / "img")


def test_ranks_split_the_entries_and_the_caption_falls_back_to_the_modality(tmp_path: Path) -> None:
    items = [(np.full((8, 4), i), {"source": f"s{i}", "modality": "xray"}) for i in range(6)]
    write_code_shards(items, tmp_path / "codes", shard_size=1)
    seen = [s["source"] for r in range(2) for s in CodesDataset(tmp_path / "codes", rank=r, world_size=2)]
    assert sorted(seen) == [f"s{i}" for i in range(6)]
    table = load_code_table(tmp_path / "codes")
    assert list(table) == [f"s{i}" for i in range(6)]  # every entry, in stored order
    assert table["s2"]["caption"] == "A X-ray image" and table["s2"]["grid"] == ()
    assert torch.equal(table["s5"]["codes"], torch.full((8, 4), 5))


def test_merge_code_folders_is_one_codes_folder(tmp_path: Path) -> None:
    parts = [tmp_path / "parts" / "a", tmp_path / "parts" / "b"]
    write_code_shards(_items(3, seed=1), parts[0], shard_size=2)
    write_code_shards(_items(2, seed=2), parts[1])
    merged = merge_code_folders(tmp_path, parts)
    assert [s["name"] for s in merged.shards] == [
        "parts/a/shard-000000.tar",
        "parts/a/shard-000001.tar",
        "parts/b/shard-000000.tar",
    ]
    assert (merged.total, merged.attempted, merged.kind) == (5, 5, "codes")
    assert len(list(CodesDataset(tmp_path))) == 5


def test_a_corrupt_entry_is_skipped_leniently_and_raised_strictly(tmp_path: Path) -> None:
    write_code_shards(_items(4), tmp_path / "codes", shard_size=2)
    strict = CodesDataset(tmp_path / "codes", shuffle=False, num_codebooks=4, strict=True)
    with pytest.raises(MedicalImageError, match="expected \\[4, h\\*w\\]"):
        next(iter(strict))
    lenient = CodesDataset(tmp_path / "codes", shuffle=False, num_codebooks=4)
    assert list(lenient) == [] and (lenient.skipped, lenient.attempted) == (4, 4)
