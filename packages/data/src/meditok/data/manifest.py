"""Manifests: one JSON line per trainable 2-D image (a file, a frame, a volume slice or an NPZ entry).

`index_directory` scans a tree; `read_manifest` also reads the reference's CSV (identifier, caption, modality,
dataset_name, ...). `load_row` turns a row back into a `MedicalImage`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage
from meditok.data.modality import modality_from_path, normalize_modality, template_caption
from meditok.data.readers import (
    DICOM_MODALITY,
    check_nifti_size,
    check_raster_size,
    file_kind,
    read_medmnist,
    read_npz_image,
    read_volume,
    regular_file,
)
from meditok.tokenizer.atomic import atomic_path

log = logging.getLogger("meditok.data")

REFERENCE_CSV_COLUMNS = ("identifier", "caption", "modality", "dataset_name")
REFERENCE_CT_BIAS = 1024


@dataclass
class ManifestRow:
    """One 2-D training image. ``kind``: image | frame | slice | volume | npz; ``index`` is the frame/slice/entry."""

    path: str
    modality: str
    kind: str = "image"
    shape: list[int] | None = None
    index: int | None = None
    plane: str | None = None
    split: str | None = None
    caption: str | None = None
    dataset_name: str | None = None
    ct_bias: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable identifier of the image (path plus frame/slice/entry)."""
        suffix = "" if self.index is None else f"#{self.plane or self.split or self.kind}={self.index}"
        return f"{self.path}{suffix}"

    def caption_or_template(self) -> str:
        return self.caption if self.caption else template_caption(self.modality)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v not in (None, {}) and not (k == "ct_bias" and v == 0)}
        extra = data.pop("extra", {})
        return {**data, **extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRow:
        known = set(cls.__dataclass_fields__) - {"extra"}
        if "path" not in data:
            raise ValueError(f"manifest row without 'path': {data}")
        kwargs = {k: data[k] for k in known if k in data}
        kwargs["modality"] = normalize_modality(data.get("modality")) if data.get("modality") else "other"
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)


@dataclass
class ScanStats:
    """What a long job did: files attempted, files skipped (with reasons), files ignored (not images)."""

    attempted: int = 0
    skipped: int = 0
    ignored: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    def record_skip(self, error: MedicalImageError) -> None:
        self.skipped += 1
        self.skipped_files.append((str(error.path), error.problem))
        log.warning("skipped %s", error)

    def summary(self) -> str:
        return f"{self.skipped} skipped of {self.attempted}"


# ------------------------------------------------------------------------------------------------ scanning


def _list_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        files.extend(Path(directory) / name for name in sorted(names) if not name.startswith("."))
    return files


def _canonical_nifti_shape(path: Path) -> tuple[list[int], Any]:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = image.shape
        orientation = nib.io_orientation(image.affine)
    except Exception as exc:
        raise MedicalImageError(path, f"unreadable NIfTI header ({type(exc).__name__}: {exc})") from None
    check_nifti_size(path, image)  # before any row is made or a voxel read (MAX_VOXELS, the file's size)
    canonical = [0, 0, 0]
    for axis in range(3):
        canonical[int(orientation[axis, 0])] = int(shape[axis]) if axis < len(shape) else 1
    return canonical + [int(s) for s in shape[3:]], image


def _slice_rows(path: Path, shape: list[int], modality: str, plane: str, step: int) -> list[ManifestRow]:
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    remaining = [shape[a] for a in range(3) if a != axis]
    slice_shape = [remaining[1], remaining[0]]
    return [
        ManifestRow(str(path), modality, "slice", slice_shape, index, plane)
        for index in range(0, shape[axis], max(1, step))
    ]


def index_file(
    path: str | Path,
    *,
    per: str = "slice",
    plane: str = "axial",
    slice_step: int = 1,
    modality: str | None = None,
) -> list[ManifestRow]:
    """Rows for one file (or DICOM series directory); [] for files that are not images. Reads headers only,
    except NIfTI without a modality hint, whose intensities decide CT vs MR."""
    path = Path(path)
    kind = file_kind(path)
    folder = modality_from_path(path)
    hint = normalize_modality(modality) if modality else folder
    if kind == "dicom":
        from meditok.data.readers import _read_dicom_dataset, check_dicom_pixel_length, check_dicom_size

        # Pixel data deferred (its length is known, its bytes are not read): the declared size is checked against
        # MAX_PIXELS and against the data, so a header cannot make a million rows of one frame.
        ds = _read_dicom_dataset(path, defer_size=1024)
        if "Rows" not in ds or "Columns" not in ds:
            raise MedicalImageError(path, "DICOM file has no image (no Rows/Columns)")
        check_dicom_size(path, ds)
        check_dicom_pixel_length(path, ds)
        resolved = hint if modality else DICOM_MODALITY.get(str(ds.get("Modality", "")).upper()) or hint or "other"
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
        shape = [int(ds.Rows), int(ds.Columns)] + (
            [3] if samples == 3 or "PALETTE" in str(ds.get("PhotometricInterpretation", "")) else []
        )
        if frames > 1 and per == "slice":
            return [ManifestRow(str(path), resolved, "frame", shape, i) for i in range(0, frames, max(1, slice_step))]
        return [ManifestRow(str(path), resolved, "image", ([frames] if frames > 1 else []) + shape)]
    if kind == "nifti":
        shape, _ = _canonical_nifti_shape(path)
        resolved = hint or read_volume(path).modality
        if per == "volume":
            return [ManifestRow(str(path), resolved, "volume", shape)]
        return _slice_rows(path, shape, resolved, plane, slice_step)
    if kind == "inv3":
        volume = read_volume(path, modality=modality)
        if per == "volume":
            return [ManifestRow(str(path), volume.modality, "volume", list(volume.shape))]
        return _slice_rows(path, list(volume.shape), volume.modality, plane, slice_step)
    if kind in ("raster", "tiff"):
        shape = _raster_shape(path)
        return [ManifestRow(str(path), hint or "other", "image", shape)]
    if kind == "npz":
        rows: list[ManifestRow] = []
        stem = path.stem.split("_")[0].lower()
        from meditok.data.readers import MEDMNIST_MODALITY

        resolved = hint or MEDMNIST_MODALITY.get(stem, "other")
        for split in ("train", "val", "test"):
            try:
                images, labels = read_medmnist(path, split)
            except MedicalImageError:
                continue
            for i in range(len(images)):
                label = None if labels is None else np.asarray(labels[i]).tolist()
                rows.append(
                    ManifestRow(
                        str(path), resolved, "npz", list(images.shape[1:]), i, split=split, extra={"label": label}
                    )
                )
        if not rows:
            raise MedicalImageError(path, "NPZ without MedMNIST arrays (train_images/val_images/test_images)")
        return rows
    return []


def _raster_shape(path: Path) -> list[int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return check_raster_size(path, image)
    except Image.DecompressionBombError as exc:
        raise MedicalImageError(path, f"image header declares too many pixels ({exc}); not decoded") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        if path.suffix.lower() in (".tif", ".tiff", ".svs"):
            import tifffile

            try:
                with tifffile.TiffFile(path) as tiff:
                    return [int(s) for s in tiff.series[0].shape]
            except Exception as tiff_exc:
                raise MedicalImageError(path, f"unreadable TIFF ({tiff_exc})") from None
        raise MedicalImageError(path, f"unreadable image header ({exc})") from None


def index_directory(
    root: str | Path,
    *,
    per: str = "slice",
    plane: str = "axial",
    slice_step: int = 1,
    modality: str | None = None,
    strict: bool = False,
    progress: bool = True,
    stats: ScanStats | None = None,
) -> Iterator[ManifestRow]:
    """Rows for every image under ``root`` (sorted, so manifests are reproducible).

    Unreadable files raise `MedicalImageError` when ``strict``; otherwise they are logged and counted in ``stats``.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise MedicalImageError(root, "not a directory")
    stats = stats if stats is not None else ScanStats()
    files = _list_files(root)
    for path in tqdm(files, desc="index", unit="file", disable=not progress):
        try:
            regular_file(path)  # before file_kind, which may open it (a FIFO would block forever)
            str(path).encode("utf-8")
        except (MedicalImageError, UnicodeEncodeError) as exc:
            stats.attempted += 1
            error = (
                exc
                if isinstance(exc, MedicalImageError)
                else MedicalImageError(path, "file name is not valid UTF-8 (a manifest is UTF-8 JSON): rename the file")
            )
            if strict:
                raise error from None
            stats.record_skip(error)
            continue
        if file_kind(path) == "unknown":
            stats.ignored += 1
            continue
        stats.attempted += 1
        try:
            rows = index_file(path, per=per, plane=plane, slice_step=slice_step, modality=modality)
        except MedicalImageError as error:
            if strict:
                raise
            stats.record_skip(error)
            continue
        yield from rows


# ------------------------------------------------------------------------------------------------ files


def write_manifest(rows: Iterable[ManifestRow | dict[str, Any]], path: str | Path) -> int:
    """Write JSON lines (atomically: a crash never leaves a half manifest); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            data = row.to_dict() if isinstance(row, ManifestRow) else row
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_manifest(
    path: str | Path, *, root: str | Path | None = None, ct_bias: int = REFERENCE_CT_BIAS
) -> list[ManifestRow]:
    """A .jsonl manifest or the reference's CSV. Relative paths resolve against ``root``, the CSV's ``root_dir``
    column, or the manifest's folder. CSV CT rows pointing at PNG/TIFF get the reference's ``ct_bias``."""
    path = Path(path)
    if not path.exists():
        raise MedicalImageError(path, "manifest does not exist")
    base = Path(root) if root is not None else path.parent
    rows: list[ManifestRow] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("identifier", "modality") if c not in (reader.fieldnames or [])]
            if missing:
                raise MedicalImageError(path, f"CSV lacks required column(s) {missing}; has {reader.fieldnames}")
            for line_number, record in enumerate(reader, start=2):
                identifier = (record.get("identifier") or "").strip()
                if not identifier:
                    raise MedicalImageError(path, f"line {line_number}: empty identifier")
                folder = Path(record["root_dir"]) if record.get("root_dir") else base
                full = Path(identifier) if os.path.isabs(identifier) else folder / identifier
                modality = normalize_modality(record.get("modality"))
                bias = ct_bias if modality == "ct" and file_kind(full) in ("raster", "tiff") else 0
                extra = {
                    k: v
                    for k, v in record.items()
                    if k not in ("identifier", "caption", "modality", "dataset_name", "root_dir")
                    and v not in (None, "")
                }
                extra["modality_label"] = record.get("modality")
                rows.append(
                    ManifestRow(
                        path=str(full),
                        modality=modality,
                        caption=record.get("caption") or None,
                        dataset_name=record.get("dataset_name") or None,
                        ct_bias=bias,
                        extra=extra,
                    )
                )
        return rows
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = ManifestRow.from_dict(json.loads(line))
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                raise MedicalImageError(path, f"line {line_number}: bad manifest row ({exc})") from None
            if not os.path.isabs(row.path):
                row.path = str(base / row.path)
            rows.append(row)
    return rows


def load_row(row: ManifestRow) -> MedicalImage:
    """The 2-D image a manifest row points at (a frame, a slice or an NPZ entry where the row says so); a volume or a
    multi-frame file listed as one row gives what every door reads from that file (`read_2d`: the middle axial slice,
    the middle frame)."""
    from meditok.data.loading import read_2d

    if row.kind == "npz":
        return read_npz_image(row.path, int(row.index or 0), row.split or "train", row.modality)
    if row.kind == "slice":
        return read_2d(row.path, modality=row.modality, slice_index=row.index, plane=row.plane or "axial")  # type: ignore[arg-type]
    if row.kind == "frame":
        return read_2d(row.path, modality=row.modality, frame=row.index)
    return read_2d(row.path, modality=row.modality, ct_bias=row.ct_bias)
