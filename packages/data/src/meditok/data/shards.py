"""WebDataset tar shards of decoded medical images, and the shard machinery other formats reuse.

Shards hold pixels in physical units, not the source files: a CT slice stays HU (16-bit PNG with an offset), so
windowing and augmentation still happen at training time, and DICOM/NIfTI parsing happens once. Each shard directory
has an ``index.json`` with per-shard sample counts; readers use it to split shards across ranks and workers and to
resume mid-epoch without reading what was already consumed. Other sample formats (meditok-ar's code shards,
``meditok.ar.codes``) reuse `ShardIndex`, `ShardSink` and `iter_shard` with their own ``kind``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage
from meditok.data.manifest import ManifestRow, ScanStats, load_row
from meditok.tokenizer.atomic import atomic_path, write_text_atomic

log = logging.getLogger("meditok.data")

INDEX_NAME = "index.json"
PARTIAL_INDEX_NAME = "index.partial.json"
SHARD_PATTERN = "shard-{:06d}.tar"


@dataclass
class ShardIndex:
    """The shard directory's table of contents."""

    directory: Path
    shards: list[dict[str, Any]]  # {"name": ..., "count": ...}
    kind: str  # "images", or another format's name (meditok-ar: "codes")
    skipped: int = 0
    attempted: int = 0

    @property
    def total(self) -> int:
        return sum(int(s["count"]) for s in self.shards)

    def paths(self) -> list[Path]:
        return [self.directory / s["name"] for s in self.shards]

    @classmethod
    def load(cls, directory: str | Path) -> ShardIndex:
        directory = Path(directory)
        index_path = directory / INDEX_NAME
        if not index_path.exists():
            hint = (
                " (an interrupted job: rerun `meditok-data shard ... --resume`)"
                if (directory / PARTIAL_INDEX_NAME).exists()
                else ""
            )
            raise MedicalImageError(directory, f"no {INDEX_NAME}: not a finished shard directory{hint}")
        try:
            data = json.loads(index_path.read_text())
            return cls(
                directory, data["shards"], data.get("kind", "images"), data.get("skipped", 0), data.get("attempted", 0)
            )
        except (json.JSONDecodeError, KeyError) as exc:
            raise MedicalImageError(index_path, f"corrupt shard index ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shards": self.shards, "skipped": self.skipped, "attempted": self.attempted}

    def save(self, name: str = INDEX_NAME, **extra: Any) -> Path:
        """Write the table of contents (atomically) as ``directory/name``; shard names are relative to it."""
        return write_text_atomic(self.directory / name, json.dumps({**self.to_dict(), **extra}, indent=1))


# ------------------------------------------------------------------------------------------------ encoding


def _to_storable(pixels: np.ndarray) -> tuple[str, bytes, int]:
    """(extension, bytes, offset): lossless PNG for 8/16-bit data (HU stored as value + offset), .npy otherwise."""
    from PIL import Image

    if pixels.dtype == np.uint8 and (pixels.ndim == 2 or pixels.shape[-1] == 3):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        return "png", buffer.getvalue(), 0
    if pixels.ndim == 2 and np.issubdtype(pixels.dtype, np.integer) and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        offset = 0 if low >= 0 else 32768
        if low + offset >= 0 and high + offset <= 65535:
            buffer = io.BytesIO()
            Image.fromarray((pixels.astype(np.int32) + offset).astype(np.uint16)).save(
                buffer, format="PNG", compress_level=1
            )
            return "png", buffer.getvalue(), offset
    buffer = io.BytesIO()
    np.save(buffer, pixels.astype(np.float32) if pixels.dtype.kind == "f" else pixels, allow_pickle=False)
    return "npy", buffer.getvalue(), 0


def _from_stored(extension: str, data: bytes, offset: int) -> np.ndarray:
    if extension == "png":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image)
        if image.mode.startswith("I;16"):
            array = array.astype(np.uint16)
        return array.astype(np.int32) - offset if offset else array
    return np.load(io.BytesIO(data), allow_pickle=False)


def _limit_size(image: MedicalImage, max_side: int | None) -> MedicalImage:
    """Downscale so the longer side is at most ``max_side`` (training reads 256 px; 2000-px X-rays waste disk)."""
    from dataclasses import replace

    import torch
    import torch.nn.functional as F

    height, width = image.pixels.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    array = image.pixels.astype(np.float32)
    tensor = torch.from_numpy(array[None, None] if array.ndim == 2 else np.moveaxis(array, -1, 0)[None].copy())
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    out = out[0] if array.ndim == 2 else np.moveaxis(out, 0, -1)
    if np.issubdtype(image.pixels.dtype, np.integer):
        info = np.iinfo(image.pixels.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(image.pixels.dtype)
    spacing = None if image.spacing is None else (image.spacing[0] / scale, image.spacing[1] / scale)
    return replace(image, pixels=np.ascontiguousarray(out), spacing=spacing)


def encode_image_sample(key: str, row: ManifestRow, image: MedicalImage) -> dict[str, Any]:
    extension, data, offset = _to_storable(image.pixels)
    meta = {
        "source": row.key,
        "modality": image.modality,
        "caption": row.caption,
        "dataset_name": row.dataset_name,
        "spacing": image.spacing,
        "window": image.window,
        "offset": offset,
        "dtype": str(image.pixels.dtype),
    }
    return {"__key__": key, extension: data, "json": json.dumps(meta).encode()}


def decode_image_sample(sample: dict[str, Any]) -> tuple[MedicalImage, dict[str, Any]]:
    meta = json.loads(sample["json"])
    extension = "png" if "png" in sample else "npy"
    pixels = _from_stored(extension, sample[extension], int(meta.get("offset", 0)))
    window = tuple(meta["window"]) if meta.get("window") else None
    spacing = tuple(meta["spacing"]) if meta.get("spacing") else None
    image = MedicalImage(
        pixels=pixels,
        modality=meta["modality"],
        source=Path(meta["source"].split("#")[0]),
        spacing=spacing,  # type: ignore[arg-type]
        window=window,  # type: ignore[arg-type]
        metadata={"key": sample["__key__"], "source": meta["source"]},
    )
    return image, meta


# ------------------------------------------------------------------------------------------------ writing


class ShardSink:
    """Writes numbered shards atomically (a temporary file, then one rename) and records the progress after each one.

    ``write(sample)`` adds a WebDataset sample ({"__key__", extension: bytes, ...}); ``row_finished`` counts an input
    row (written or skipped); ``finish()`` closes the last shard and writes ``index.json`` of the given ``kind``."""

    def __init__(self, out_dir: Path, shard_size: int, kind: str, resume: bool) -> None:
        from webdataset import TarWriter

        self._tar_writer_cls = TarWriter
        self.out_dir = out_dir
        self.shard_size = shard_size
        self.kind = kind
        self.shards: list[dict[str, Any]] = []
        self.rows_done = 0
        self.skipped = 0
        self.attempted = 0
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out_dir / PARTIAL_INDEX_NAME
        if resume and partial.exists():
            state = json.loads(partial.read_text())
            self.shards, self.rows_done = state["shards"], state["rows_done"]
            self.skipped, self.attempted = state["skipped"], state["attempted"]
        elif (out_dir / INDEX_NAME).exists() or partial.exists():
            if not resume:
                for stale in list(out_dir.glob("shard-*.tar")) + [out_dir / INDEX_NAME, partial]:
                    stale.unlink(missing_ok=True)
        for unfinished in out_dir.glob(".shard-*.tar.*"):  # the temporary of a shard an interrupted job was writing
            unfinished.unlink(missing_ok=True)
        self._writer: Any = None
        self._handle: Any = None
        self._count = 0
        self._rows_in_shard = 0

    @property
    def next_key_number(self) -> int:
        return sum(int(s["count"]) for s in self.shards) + self._count

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            self._shard_file = contextlib.ExitStack()
            temporary = self._shard_file.enter_context(
                atomic_path(self.out_dir / SHARD_PATTERN.format(len(self.shards)))
            )
            self._handle = self._shard_file.enter_context(open(temporary, "wb"))
            self._writer = self._tar_writer_cls(self._handle, encoder=False, mtime=0.0)
        self._writer.write(sample)
        self._count += 1
        if self._count >= self.shard_size:
            self.close_shard()

    def row_finished(self, skipped: bool) -> None:
        self.attempted += 1
        self.skipped += int(skipped)
        self._rows_in_shard += 1

    def close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._shard_file.close()  # closes the file and renames it into place
        name = SHARD_PATTERN.format(len(self.shards))
        self.shards.append({"name": name, "count": self._count})
        self.rows_done += self._rows_in_shard
        self._writer, self._count, self._rows_in_shard = None, 0, 0
        self._index().save(PARTIAL_INDEX_NAME, rows_done=self.rows_done)

    def _index(self) -> ShardIndex:
        return ShardIndex(self.out_dir, self.shards, self.kind, self.skipped, self.attempted)

    def finish(self) -> ShardIndex:
        if self._writer is not None:
            self.close_shard()
        self.rows_done += self._rows_in_shard  # trailing skipped rows
        index = self._index()
        index.save()
        (self.out_dir / PARTIAL_INDEX_NAME).unlink(missing_ok=True)
        return index


def write_shards(
    rows: Iterable[ManifestRow],
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    max_side: int | None = None,
    strict: bool = False,
    resume: bool = False,
    progress: bool = True,
    stats: ScanStats | None = None,
) -> ShardIndex:
    """Decode every row once and pack the pixels into WebDataset tar shards of ``shard_size`` samples.

    Lenient (default): unreadable rows are logged, counted and left out. ``resume`` continues an interrupted job
    after its last complete shard (the rows must be the same, in the same order).
    """
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    rows = list(rows)
    stats = stats if stats is not None else ScanStats()
    sink = ShardSink(Path(out_dir), shard_size, "images", resume)
    start = sink.rows_done
    stats.attempted, stats.skipped = sink.attempted, sink.skipped
    for row in tqdm(rows[start:], desc="shard", unit="img", initial=start, total=len(rows), disable=not progress):
        stats.attempted += 1
        try:
            image = load_row(row)
            pixels = image.pixels
            if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():  # as unit_image
                bad = int((~np.isfinite(pixels)).sum())
                raise MedicalImageError(image.source, f"{bad} non-finite pixel value(s) (NaN or infinity)")
            image = _limit_size(image, max_side)
        except MedicalImageError as error:
            if strict:
                raise
            stats.record_skip(error)
            sink.row_finished(skipped=True)
            continue
        sink.write(encode_image_sample(f"{sink.next_key_number:09d}", row, image))
        sink.row_finished(skipped=False)
    return sink.finish()


# ------------------------------------------------------------------------------------------------ reading


def iter_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """Raw samples ({"__key__", "png"/"npy", "json"}) of one shard, in stored order."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            files = ({**member, "__url__": str(path)} for member in tar_file_iterator(handle))
            yield from group_by_keys(files)
    except FileNotFoundError:
        raise MedicalImageError(path, "shard file is missing") from None
    except (OSError, EOFError, ValueError, tarfile.TarError) as exc:
        raise MedicalImageError(path, f"corrupt shard ({type(exc).__name__}: {exc})") from None
