"""Whole volumes (NIfTI, DICOM series folders, multi-frame DICOM, .inv3) as slices for the tokenizer, and back.

Every slice goes through the one image-input contract (`MedicalVolume.slice` -> `unit_image` -> the tokenizer's
`preprocess`), exactly as `read_2d(path, slice_index=i)` would give it; what is needed to undo it is recorded in a
`VolumeGeometry`: the file's own voxel order and affine (a NIfTI is written back as it was stored, not in the RAS
order the readers use), the sliced plane, each slice's size before the resize, and the per-slice intensity bounds
(the CT window in HU, or the percentiles of an MR slice), so a reconstruction comes back in HU or the file's units.

The tokenizer's `meditok.tokenizer.volumes` runs the model over `VolumeSlices` (a torch Dataset) in batches.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meditok.data.errors import MedicalImageError
from meditok.data.image import PLANE_AXIS, MedicalVolume, Plane
from meditok.data.readers import file_kind, read_volume
from meditok.data.transforms import intensity_bounds, unit_image
from meditok.tokenizer.preprocessing import ImageInput, preprocess, restore_geometry

VOLUME_CODES_FORMAT = "meditok-volume-codes-v1"
PLANES: tuple[str, ...] = tuple(PLANE_AXIS)


@dataclass
class VolumeGeometry:
    """What turns a volume's codes back into a volume that overlays the original (JSON-serialisable).

    ``source_affine`` / ``source_shape`` / ``source_dtype`` describe the voxel grid as the file stores it (for NIfTI
    the header's affine, for DICOM series the LPS->RAS affine from ImagePositionPatient/ImageOrientationPatient);
    ``canonical_*`` the RAS grid the slices were cut from. ``bounds[i]`` is slice i's (low, high) in physical units
    (None for a skipped slice); ``slice_shape`` the (rows, columns) of a slice before the resize.
    """

    source: str
    format: str
    modality: str
    plane: str
    source_affine: list[list[float]]
    source_shape: list[int]
    source_dtype: str
    canonical_affine: list[list[float]]
    canonical_shape: list[int]
    spacing: list[float]
    slice_shape: list[int]
    image_input: dict[str, Any]
    bounds: list[list[float] | None]
    dicom: dict[str, Any] = field(default_factory=dict)

    @property
    def axis(self) -> int:
        return PLANE_AXIS[self.plane]

    @property
    def spec(self) -> ImageInput:
        return ImageInput.from_dict(self.image_input)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, where: str = "geometry") -> VolumeGeometry:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a volume geometry ({exc})") from None


def _source_grid(path: Path, volume: MedicalVolume) -> tuple[np.ndarray, tuple[int, ...]]:
    """The file's own voxel order: a NIfTI header's affine and shape; for the other formats the canonical grid (a
    DICOM series or .inv3 has no stored voxel order to go back to; RAS with the same world coordinates overlays it)."""
    canonical_affine = volume.affine if volume.affine is not None else np.diag([*volume.spacing, 1.0])
    if file_kind(path) == "nifti":
        import nibabel as nib

        image = nib.load(str(path))
        return np.asarray(image.affine, dtype=np.float64), tuple(int(s) for s in image.shape[:3])
    # A NIfTI header stores the affine in float32: record it as it will be written, so the round trip is exact
    return np.asarray(canonical_affine, dtype=np.float32).astype(np.float64), volume.shape[:3]


def _reorient(canonical: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    """Canonical (RAS) voxels -> the voxel order of a file with ``source_affine`` (the inverse of what
    `nibabel.as_closest_canonical` did when the file was read)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    to_source = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(source_affine))
    return apply_orientation(canonical, to_source)


class VolumeSlices(torch.utils.data.Dataset):
    """Slice ``i`` along ``plane`` of a volume as tokenizer input, for a DataLoader (`collate_slices`).

    An item is a dict: ``index``, ``image`` (float32 [3,H,W] in [-1,1], or None when the slice cannot be prepared),
    ``bounds`` ((low, high) the slice's [0, 1] stands for) and ``error`` (one line, or None).
    """

    def __init__(
        self,
        source: str | Path,
        spec: ImageInput | None = None,
        plane: Plane = "axial",
        modality: str | None = None,
    ) -> None:
        if plane not in PLANE_AXIS:
            raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
        self.path = Path(source)
        self.spec = spec or ImageInput()
        self.plane = plane
        volume = read_volume(self.path, modality=modality)
        if volume.voxels.ndim != 3:
            raise MedicalImageError(
                self.path, f"is a {volume.voxels.ndim}-D volume of shape {volume.shape}; volumes are tokenised in 3-D"
            )
        if volume.voxels.dtype.kind not in "iuf":
            raise MedicalImageError(self.path, f"voxels of dtype {volume.voxels.dtype} are not grayscale intensities")
        self.volume = volume

    def __len__(self) -> int:
        return self.volume.num_slices(self.plane)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.volume.slice(index, self.plane)
        try:
            bounds = intensity_bounds(image, self.spec)
            tensor = preprocess(unit_image(image, self.spec), self.spec)[0]
        except (MedicalImageError, ValueError) as exc:
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, MedicalImageError) else str(exc)
            return {"index": index, "image": None, "bounds": None, "error": reason}
        return {"index": index, "image": tensor, "bounds": bounds, "error": None}

    def geometry(self) -> VolumeGeometry:
        volume = self.volume
        source_affine, source_shape = _source_grid(self.path, volume)
        canonical_affine = volume.affine if volume.affine is not None else np.diag([*volume.spacing, 1.0])
        rows_cols = self.volume.slice(0, self.plane).pixels.shape[:2]
        dicom = {}
        if "series_uid" in volume.metadata:
            dicom = {"series_uid": volume.metadata["series_uid"], "files": len(volume.metadata.get("files", []))}
        return VolumeGeometry(
            source=str(self.path),
            format=str(volume.metadata.get("format", file_kind(self.path))),
            modality=volume.modality,
            plane=self.plane,
            source_affine=np.asarray(source_affine, dtype=np.float64).tolist(),
            source_shape=[int(s) for s in source_shape],
            source_dtype=str(volume.voxels.dtype),
            canonical_affine=np.asarray(canonical_affine, dtype=np.float64).tolist(),
            canonical_shape=[int(s) for s in volume.shape[:3]],
            spacing=[float(s) for s in volume.spacing],
            slice_shape=[int(s) for s in rows_cols],
            image_input=self.spec.to_dict(),
            bounds=[None] * len(self),
            dicom=dicom,
        )


def collate_slices(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A DataLoader batch: the good slices stacked ([N,3,H,W], None if none), their indices and bounds; the bad ones
    as (index, reason)."""
    good = [item for item in items if item["image"] is not None]
    return {
        "indices": [item["index"] for item in good],
        "images": torch.stack([item["image"] for item in good]) if good else None,
        "bounds": [item["bounds"] for item in good],
        "errors": [(item["index"], item["error"]) for item in items if item["image"] is None],
    }


@dataclass
class VolumeCodes:
    """A tokenised volume: ``codes`` int64 [D, 8, h*w] for the slices ``slices`` (indices along ``geometry.plane``;
    skipped slices are missing), ``grid`` (h, w), ``skipped`` [(index, reason)]."""

    name: str
    codes: torch.Tensor
    slices: np.ndarray
    grid: tuple[int, int]
    geometry: VolumeGeometry
    skipped: list[tuple[int, str]] = field(default_factory=list)


def save_volume_codes(path: str | Path, volumes: list[VolumeCodes]) -> Path:
    """One .npz for one or more volumes: ``codes_<i>`` uint16 [D, 8, h*w], ``slices_<i>`` int32, ``grid_<i>``,
    ``geometry_<i>`` (JSON), ``names`` and ``format``."""
    arrays: dict[str, np.ndarray] = {}
    for i, item in enumerate(volumes):
        arrays[f"codes_{i}"] = item.codes.cpu().numpy().astype(np.uint16)
        arrays[f"slices_{i}"] = np.asarray(item.slices, dtype=np.int32)
        arrays[f"grid_{i}"] = np.asarray(item.grid, dtype=np.int32)
        arrays[f"geometry_{i}"] = np.array(item.geometry.to_json())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = np.array([item.name for item in volumes])
    np.savez_compressed(path, names=names, format=np.array(VOLUME_CODES_FORMAT), **arrays)
    return path


def load_volume_codes(path: str | Path) -> list[VolumeCodes]:
    """The volumes of a `save_volume_codes` file (ValueError naming the file for anything else)."""
    try:
        data = np.load(path, allow_pickle=False)
        if "format" not in data or str(data["format"]) != VOLUME_CODES_FORMAT:
            raise ValueError(f"not a volume codes file (format {VOLUME_CODES_FORMAT!r})")
        out = []
        for i, name in enumerate(str(n) for n in data["names"]):
            geometry = VolumeGeometry.from_json(str(data[f"geometry_{i}"]), f"{path} [{name}]")
            grid = tuple(int(v) for v in data[f"grid_{i}"])
            codes = torch.from_numpy(data[f"codes_{i}"].astype(np.int64))
            slices = data[f"slices_{i}"].astype(np.int64)
            if codes.ndim != 3 or len(slices) != codes.shape[0] or codes.shape[2] != grid[0] * grid[1]:
                raise ValueError(f"[{name}] codes of shape {tuple(codes.shape)} do not match {len(slices)} slices")
            out.append(VolumeCodes(name, codes, slices, grid, geometry))  # type: ignore[arg-type]
        return out
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


# ------------------------------------------------------------------------------------------------ back to a volume


@dataclass
class ReconstructedVolume:
    """A decoded volume: ``canonical`` float32 voxels in physical units on the RAS grid the slices were cut from
    (NaN where no slice or no token covered the voxel), and ``voxels`` / ``affine`` in the file's own order and dtype
    (gaps filled with the lowest bound), ready for `write_nifti`."""

    canonical: np.ndarray
    voxels: np.ndarray
    affine: np.ndarray
    geometry: VolumeGeometry

    def save(self, path: str | Path) -> Path:
        return write_nifti(self.voxels, self.affine, path)


def assemble_volume(unit_slices: dict[int, np.ndarray], geometry: VolumeGeometry) -> ReconstructedVolume:
    """Decoded slices in [0, 1] (prepared size, (h, w) gray or (h, w, 3)) keyed by slice index -> the volume.

    Each slice is resized back to its original size (`restore_geometry`), mapped to physical units with its bounds,
    and put back into the RAS grid (the inverse of `MedicalVolume.slice`'s display orientation); the grid is then
    reoriented to the file's voxel order."""
    spec = geometry.spec
    axis = geometry.axis
    canonical = np.full(geometry.canonical_shape, np.nan, dtype=np.float32)
    rows, cols = geometry.slice_shape
    for index, unit in unit_slices.items():
        bounds = geometry.bounds[index]
        if bounds is None:
            raise ValueError(f"slice {index} has no recorded intensity bounds (it was skipped when encoding)")
        unit = np.asarray(unit, dtype=np.float32)
        gray = unit.mean(axis=2) if unit.ndim == 3 else unit  # grayscale input went in as 3 equal channels
        restored = restore_geometry(np.clip(gray, 0.0, 1.0), rows, cols, spec)
        low, high = bounds
        physical = np.float32(low) + restored * np.float32(high - low)
        # MedicalVolume.slice shows plane_data.T[::-1]; undo the row flip, then the transpose
        np.moveaxis(canonical, axis, 0)[index] = physical[::-1].T
    filled = canonical
    if np.isnan(canonical).any():
        lowest = min(b[0] for b in geometry.bounds if b is not None)
        filled = np.where(np.isnan(canonical), np.float32(lowest), canonical)
    dtype = np.dtype(geometry.source_dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        filled = np.clip(np.rint(filled), info.min, info.max)
    else:
        dtype = np.dtype(np.float32)
    source_affine = np.asarray(geometry.source_affine, dtype=np.float64)
    voxels = np.ascontiguousarray(_reorient(filled, source_affine).astype(dtype))
    if list(voxels.shape) != list(geometry.source_shape):
        raise ValueError(f"reoriented shape {voxels.shape} differs from the source's {tuple(geometry.source_shape)}")
    return ReconstructedVolume(canonical, voxels, source_affine, geometry)


def write_nifti(voxels: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """A NIfTI-1 file (.nii or .nii.gz) with ``affine`` as both sform and qform (code 1, scanner), units mm."""
    import nibabel as nib

    image = nib.Nifti1Image(voxels, np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def slice_psnr(original: np.ndarray, reconstruction: np.ndarray, geometry: VolumeGeometry) -> dict[str, Any]:
    """PSNR per slice and overall in physical units (HU for CT): for slice i the original clipped to its bounds (what
    the tokenizer can represent) against the reconstruction, peak = high - low (the window width for CT); overall =
    10 log10(1 / mean_i(MSE_i / peak_i^2)), which for CT is the PSNR of all voxels with the window width as peak.
    Voxels no token covered (NaN) are left out. Both arrays are canonical (RAS) grids of the same shape."""
    per_slice: dict[int, float] = {}
    ratios = []
    axis = geometry.axis
    for index, bounds in enumerate(geometry.bounds):
        if bounds is None:
            continue
        low, high = bounds
        if not high > low:
            continue
        recon = reconstruction[(slice(None),) * axis + (index,)].astype(np.float64)
        orig = np.clip(original[(slice(None),) * axis + (index,)].astype(np.float64), low, high)
        covered = np.isfinite(recon)
        mse = float(np.mean((recon[covered] - orig[covered]) ** 2)) if covered.any() else math.nan
        ratio = mse / (high - low) ** 2
        ratios.append(ratio)
        per_slice[index] = math.inf if mse == 0 else 10 * math.log10(1 / ratio)
    mean_ratio = float(np.nanmean(ratios)) if ratios else math.nan
    overall = math.inf if mean_ratio == 0 else 10 * math.log10(1 / mean_ratio)
    unit = "HU" if geometry.modality == "ct" else "file units"
    return {"per_slice": per_slice, "overall": overall, "unit": unit}


def triptych(original: np.ndarray, reconstruction: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """uint8 (H, W) picture: the middle axial | coronal | sagittal slices of the original (top row) and of the
    reconstruction (bottom row, same slices), in display orientation, shown through the volume's window (the CT window; the
    lowest low / highest high bound otherwise) and stretched to square millimetres."""
    from PIL import Image

    present = [b for b in geometry.bounds if b is not None]
    low, high = min(b[0] for b in present), max(b[1] for b in present)
    spacing = tuple(geometry.spacing)
    rows: list[list[np.ndarray]] = [[], []]  # original, reconstruction
    for plane in ("axial", "coronal", "sagittal"):
        for row, voxels in zip(rows, (original, reconstruction)):
            view = MedicalVolume(np.nan_to_num(voxels.astype(np.float32), nan=low), geometry.modality, spacing=spacing)
            middle = view.slice(view.num_slices(plane) // 2, plane)  # type: ignore[arg-type]
            gray = np.clip((middle.pixels - low) / max(high - low, 1e-12), 0, 1)
            picture = Image.fromarray(np.round(gray * 255).astype(np.uint8))
            row_mm, col_mm = middle.spacing or (1.0, 1.0)
            height = max(1, round(picture.height * row_mm / col_mm))  # square pixels in millimetres
            row.append(np.asarray(picture.resize((picture.width, height), Image.Resampling.BILINEAR)))
    tallest = max(p.shape[0] for row in rows for p in row)
    # 4 black pixels between panels; each row as tall as the tallest panel
    lines = [np.concatenate([np.pad(p, ((0, tallest - p.shape[0]), (0, 4))) for p in row], axis=1) for row in rows]
    return np.concatenate([lines[0], np.zeros((4, lines[0].shape[1]), np.uint8), lines[1]], axis=0)[:, :-4]
