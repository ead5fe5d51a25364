"""`meditok-ar pretokenize`: manifest -> CodesDataset shards, once, sharded over ranks and resumable.

Rows are cut into global chunks of ``chunk_size``; rank r of W encodes chunks r, r+W, ... into
``OUT/parts/part-NNNNNN/`` (written to a temporary folder and renamed when complete), so an interrupted job reruns
only unfinished chunks, with any world size. Whoever finishes last writes ``OUT/index.json`` listing every part's
shards, which makes ``OUT`` an ordinary CodesDataset folder. Each entry's metadata: source (the manifest key),
modality, caption, grid.

``augment=N`` adds N augmented views of every image (meditok-data's training transform: random crop 0.9-1, flips, +-90
degree rotation, grayscale, a random CT window), keyed ``augmented_key(source, i)`` and seeded by the row and view, so
a rerun writes the same codes: fine-tuning on a few hundred images then sees each image in several forms instead of
memorising one code sequence per image."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

PARTS = "parts"


def augmented_key(source: str, view: int) -> str:
    """The code entry of an image's ``view``-th augmented view (view 0: the image itself)."""
    return source if view == 0 else f"{source}@aug{view}"


def pretokenize(manifest: str | os.PathLike, out_dir: str | os.PathLike, tokenizer: Any, *, size: int | None = None,
                rank: int | None = None, world_size: int | None = None, chunk_size: int = 64, batch_size: int = 8,
                max_chunks: int | None = None, progress: bool = False, augment: int = 0,
                seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Encode the rows of ``manifest`` assigned to this rank. ``tokenizer``: a MedITok or its path.
    ``max_chunks`` stops after that many new chunks (to test resumption); ``augment`` augmented views per image
    (module docstring). Returns counts."""
    from meditok.ar.codes import write_code_shards
    from meditok.data import Preprocess, load_row, read_manifest
    from meditok.data.distributed import rank_and_world_size
    from meditok.data.errors import MedicalImageError

    rank, world_size = rank_and_world_size(rank, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if isinstance(tokenizer, (str, os.PathLike)):
        from meditok.tokenizer import MedITok

        tokenizer = MedITok.from_pretrained(str(tokenizer)).eval()
    rows = read_manifest(manifest)
    out = Path(out_dir)
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(rows) + chunk_size - 1) // chunk_size
    # The image-input contract with the tokenizer's recorded settings (``size`` overrides the side only); shapes vary
    # with "shorter" / "native", so every image keeps its own grid.
    if augment < 0:
        raise ValueError(f"augment must be >= 0, got {augment}")
    spec = tokenizer.image_input.with_overrides(size=size)
    prepare = Preprocess.from_spec(spec)  # eval mode: the contract
    prepare_augmented = Preprocess.from_spec(spec, train=True)
    done = skipped_rows = new_chunks = 0
    for chunk in range(rank, n_chunks, world_size):
        final = parts / f"part-{chunk:06d}"
        if (final / "index.json").exists():
            done += 1
            continue
        if max_chunks is not None and new_chunks >= max_chunks:
            break
        items: list[tuple[Any, dict[str, Any]]] = []
        chunk_rows = rows[chunk * chunk_size : (chunk + 1) * chunk_size]
        tensors, metas = [], []
        for index, row in enumerate(chunk_rows, start=chunk * chunk_size):
            try:
                image = load_row(row)
                views = [prepare(image)]
                for view in range(1, augment + 1):
                    generator = torch.Generator().manual_seed(seed * 1_000_003 + index * 1_009 + view)
                    views.append(prepare_augmented(image, generator))
                tensors += views
                metas += [{"source": augmented_key(row.key, v), "modality": row.modality, "caption": row.caption}
                          for v in range(len(views))]  # fmt: skip
            except (MedicalImageError, ValueError) as error:
                skipped_rows += 1
                print(f"skipped {row.key}: {error}", flush=True)
        for i in range(0, len(tensors), batch_size):
            batch = tensors[i : i + batch_size]
            if len({t.shape for t in batch}) > 1:  # variable-size policies: encode one by one
                codes = [tokenizer.encode(t[None].to(tokenizer.device))[0].cpu() for t in batch]
            else:
                with torch.no_grad():
                    codes = list(tokenizer.encode(torch.stack(batch).to(tokenizer.device)).cpu())
            for c, t, meta in zip(codes, batch, metas[i : i + batch_size]):
                h, w = t.shape[-2] // 16, t.shape[-1] // 16
                items.append((c.reshape(c.shape[0], h, w).numpy(), meta))
        temporary = parts / f"part-{chunk:06d}.tmp-{rank}"
        shutil.rmtree(temporary, ignore_errors=True)
        write_code_shards(items, temporary, shard_size=max(1, len(items)))
        os.replace(temporary, final)
        new_chunks += 1
        done += 1
        if progress:
            print(f"rank {rank}: chunk {chunk + 1}/{n_chunks}", flush=True)
    complete = _write_index_if_complete(out, n_chunks)
    return {"rows": len(rows), "views_per_row": augment + 1, "chunks": n_chunks, "chunks_done_by_rank": done,
            "new_chunks": new_chunks, "skipped_rows": skipped_rows, "complete": complete}  # fmt: skip


def _write_index_if_complete(out: Path, n_chunks: int) -> bool:
    from meditok.ar.codes import merge_code_folders

    parts = [out / PARTS / f"part-{c:06d}" for c in range(n_chunks)]
    if not all((p / "index.json").exists() for p in parts):
        return False
    merge_code_folders(out, parts)
    return True
