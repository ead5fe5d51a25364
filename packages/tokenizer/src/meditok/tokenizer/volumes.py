"""Whole volumes through the tokenizer: every slice along a plane, in batches, and back to a NIfTI volume.

Reading and writing volumes (NIfTI, DICOM series folders, multi-frame DICOM, .inv3) is meditok-data's job
(`meditok.data.volumes`); the tokenizer uses it only when it is installed, like the CLI's DICOM path. Each slice
becomes tokenizer input through the one image-input contract, so slice i's codes equal
``tok.tokenize(read_2d(path, slice_index=i))``'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from meditok.data.volumes import ReconstructedVolume, VolumeCodes

    from .api import MedITok

NEEDS_DATA = "tokenising volumes needs meditok-data (pip install meditok-data)"


def _volumes_module():
    try:  # optional: the tokenizer installs without meditok-data
        from meditok.data import volumes
    except ImportError:
        raise ImportError(NEEDS_DATA) from None
    return volumes


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    # tqdm shows the rate and the ETA; under ~2 batches there is nothing to wait for
    return tqdm(total=total, desc=desc, unit="slice", disable=not enabled)


def encode_volume(
    tok: MedITok,
    source: str | os.PathLike,
    *,
    plane: str = "axial",
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
    strict: bool = False,
    on_skip: Callable[[int, str], None] | None = None,
    modality: str | None = None,
    **overrides: Any,
) -> VolumeCodes:
    """A NIfTI file, DICOM series folder, multi-frame DICOM or .inv3 -> `VolumeCodes` (codes int64 [D, 8, h*w]).

    Slices along ``plane`` are read by a DataLoader (``num_workers`` processes) and encoded ``batch_size`` at a time.
    A slice that cannot be prepared (NaN voxels, ...) is skipped and passed to ``on_skip(index, reason)`` (under
    ``strict`` it raises ValueError instead); the rest continue. ``overrides`` are image-input settings (size=, ...).
    """
    volumes = _volumes_module()
    from meditok.data import MedicalImageError

    spec = tok.image_input.with_overrides(**overrides)
    path = Path(source)
    try:
        dataset = volumes.VolumeSlices(path, spec, plane=plane, modality=modality)  # type: ignore[arg-type]
    except MedicalImageError as exc:
        raise ValueError(str(exc)) from None
    geometry = dataset.geometry()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=volumes.collate_slices
    )
    codes, indices, skipped, grid = [], [], [], None
    with _progress(len(dataset), f"encoding {path.name}", progress) as bar:
        for batch in loader:
            for index, reason in batch["errors"]:
                if strict:
                    raise ValueError(f"{path}: {plane} slice {index}: {reason}")
                skipped.append((index, reason))
                if on_skip is not None:
                    on_skip(index, reason)
            if batch["images"] is not None:
                images = batch["images"]
                grid = (images.shape[-2] // 16, images.shape[-1] // 16)
                codes.append(tok.encode(images).cpu())
                indices.extend(batch["indices"])
                for index, bounds in zip(batch["indices"], batch["bounds"]):
                    geometry.bounds[index] = [float(bounds[0]), float(bounds[1])]
            bar.update(len(batch["indices"]) + len(batch["errors"]))
    if not codes:
        raise ValueError(f"{path}: none of its {len(dataset)} {plane} slices could be tokenised")
    return volumes.VolumeCodes(
        name=path.name,
        codes=torch.cat(codes),
        slices=np.asarray(indices, dtype=np.int64),
        grid=grid,  # type: ignore[arg-type]
        geometry=geometry,
        skipped=skipped,
    )


def decode_volume(
    tok: MedITok, volume_codes: VolumeCodes, *, batch_size: int = 8, progress: bool = True
) -> ReconstructedVolume:
    """`VolumeCodes` -> `ReconstructedVolume`: decoded slices resized back to the original slice size, in physical
    units (HU for CT), in the file's own voxel order with its affine (``.save("recon.nii.gz")`` writes it)."""
    volumes = _volumes_module()
    unit_slices: dict[int, np.ndarray] = {}
    codes, slices = volume_codes.codes, volume_codes.slices
    with _progress(len(slices), f"decoding {volume_codes.name}", progress) as bar:
        for start in range(0, len(slices), batch_size):
            images = tok.decode(codes[start : start + batch_size], grid=volume_codes.grid)
            unit = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
            for index, picture in zip(slices[start : start + batch_size], unit):
                unit_slices[int(index)] = picture
            bar.update(len(unit))
    return volumes.assemble_volume(unit_slices, volume_codes.geometry)


def reconstruct_volume(
    tok: MedITok, source: str | os.PathLike, *, batch_size: int = 8, progress: bool = True, **options: Any
) -> tuple[VolumeCodes, ReconstructedVolume, dict[str, Any]]:
    """`encode_volume` then `decode_volume`; also the PSNR per slice and overall in HU / file units
    (`meditok.data.volumes.slice_psnr`, the original clipped to each slice's window)."""
    volumes = _volumes_module()
    from meditok.data import read_volume

    encoded = encode_volume(tok, source, batch_size=batch_size, progress=progress, **options)
    rebuilt = decode_volume(tok, encoded, batch_size=batch_size, progress=progress)
    original = read_volume(Path(source), modality=options.get("modality")).voxels
    return encoded, rebuilt, volumes.slice_psnr(original, rebuilt.canonical, encoded.geometry)
