"""The code-array format: MedITok codes stored as WebDataset shards, written by ``meditok-ar pretokenize`` and read by
the AR trainer. Each sample is ``{"__key__", "npy": uint16 [num_codebooks, h*w], "json": metadata}`` (metadata:
source = the manifest key, modality, caption, grid = [h, w]); the folder's ``index.json`` has kind ``"codes"``.

Built on meditok-data's shard machinery (`ShardIndex`, `ShardSink`, `StreamDataset`): the same atomic shards, index,
rank/worker split and mid-epoch resume as the image shards."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meditok.ar.layout import CODEBOOK_SIZE, NUM_CODEBOOKS
from meditok.data import MedicalImageError, ShardIndex, template_caption
from meditok.data.datasets import StreamDataset
from meditok.data.shards import INDEX_NAME, ShardSink

KIND = "codes"


def validate_codes(
    codes: np.ndarray, where: str, num_codebooks: int = NUM_CODEBOOKS, codebook_size: int = CODEBOOK_SIZE
) -> None:
    """MedicalImageError unless ``codes`` is [num_codebooks, h*w] or [num_codebooks, h, w] in [0, codebook_size)."""
    if codes.ndim not in (2, 3) or codes.shape[0] != num_codebooks:
        raise MedicalImageError(
            where, f"codes of shape {tuple(codes.shape)}: expected [{num_codebooks}, h*w] or [{num_codebooks}, h, w]"
        )
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise MedicalImageError(
            where, f"codes outside [0, {codebook_size}): min {int(codes.min())}, max {int(codes.max())}"
        )


def write_code_shards(
    items: Iterable[tuple[np.ndarray, dict[str, Any]]],
    out_dir: str | Path,
    *,
    shard_size: int = 10000,
    num_codebooks: int = NUM_CODEBOOKS,
    codebook_size: int = CODEBOOK_SIZE,
) -> ShardIndex:
    """Store tokenizer codes ([num_codebooks, h, w] or [num_codebooks, h*w] integers) with their metadata."""
    sink = ShardSink(Path(out_dir), shard_size, KIND, resume=False)
    for codes, meta in items:
        codes = np.asarray(codes)
        key = f"{sink.next_key_number:09d}"
        validate_codes(codes, key, num_codebooks, codebook_size)
        grid = list(codes.shape[1:]) if codes.ndim == 3 else meta.get("grid")
        buffer = io.BytesIO()
        np.save(buffer, codes.reshape(codes.shape[0], -1).astype(np.uint16), allow_pickle=False)
        sink.write({"__key__": key, "npy": buffer.getvalue(), "json": json.dumps({**meta, "grid": grid}).encode()})
        sink.row_finished(skipped=False)
    return sink.finish()


def merge_code_folders(out_dir: str | Path, parts: Iterable[str | Path]) -> ShardIndex:
    """Write ``out_dir/index.json`` listing the shards of finished code folders below ``out_dir`` (in this order)."""
    out_dir = Path(out_dir)
    shards, skipped, attempted = [], 0, 0
    for part in parts:
        index = ShardIndex.load(part)
        prefix = Path(part).relative_to(out_dir).as_posix()
        shards += [{"name": f"{prefix}/{s['name']}", "count": s["count"]} for s in index.shards]
        skipped += index.skipped
        attempted += index.attempted
    merged = ShardIndex(out_dir, shards, KIND, skipped, attempted)
    merged.save()
    return merged


class CodesDataset(StreamDataset):
    """Pre-tokenised codes for AR training → {"codes": int64 [8, h*w] (or [8, h, w] with ``grid=True``), "key",
    "source", "modality", "caption" (the stored one, else the modality template), "grid": (h, w), or () when the
    folder stored none}."""

    def __init__(
        self,
        source: str | Path,
        *,
        grid: bool = False,
        num_codebooks: int = NUM_CODEBOOKS,
        codebook_size: int = CODEBOOK_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shards = ShardIndex.load(source)
        if self.shards.kind != KIND:
            raise MedicalImageError(Path(source) / INDEX_NAME, f"holds {self.shards.kind}, not codes")
        self.grid = grid
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size

    def __len__(self) -> int:
        return self.shards.total

    def decode(self, raw: dict[str, Any], where: str, position: int = 0) -> dict[str, Any]:
        meta = json.loads(raw["json"])
        codes = np.load(io.BytesIO(raw["npy"]), allow_pickle=False)
        validate_codes(codes, where, self.num_codebooks, self.codebook_size)
        tensor = torch.from_numpy(codes.astype(np.int64))
        grid = tuple(meta["grid"]) if meta.get("grid") else ()
        if self.grid:
            if not grid:
                raise MedicalImageError(where, "no grid size stored: cannot return [8, h, w]")
            tensor = tensor.reshape(tensor.shape[0], *grid)
        modality = meta.get("modality", "other")
        return {
            "codes": tensor,
            "key": raw["__key__"],
            "source": meta.get("source", raw["__key__"]),
            "modality": modality,
            "caption": meta.get("caption") or template_caption(modality),
            "grid": grid,
        }

    def samples(self, stream: int, streams: int, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
        return self.shard_samples(self.shards, stream, streams, skip, self.decode)


def load_code_table(codes_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{source key: CodesDataset sample} of a whole codes folder, in stored order, on every rank (strict: a bad entry
    is an error, not a silently missing image)."""
    dataset = CodesDataset(codes_dir, shuffle=False, strict=True, rank=0, world_size=1)
    return {sample["source"]: sample for sample in dataset}
