"""In-memory medical images: pixels in physical units plus the metadata preprocessing needs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

Plane = Literal["axial", "coronal", "sagittal"]
# Array axis of a canonical (RAS) volume that each plane slices along.
PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass(frozen=True)
class MedicalImage:
    """One 2-D image (or a multi-frame clip) with intensities in physical units.

    ``pixels`` is (H, W) grayscale or (H, W, 3) RGB; a multi-frame image has a leading frame axis,
    (F, H, W) or (F, H, W, 3), and ``num_frames`` > 1. CT pixels are Hounsfield units; MONOCHROME1
    images are already inverted so that larger always means brighter.
    """

    pixels: np.ndarray
    modality: str
    source: Path | None = None
    spacing: tuple[float, float] | None = None  # (row, column) mm
    num_frames: int = 1
    # DICOM VOI window (level, width) if the file carries one; used only when preprocessing is asked to.
    window: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_rgb(self) -> bool:
        return self.pixels.ndim == (4 if self.num_frames > 1 else 3) and self.pixels.shape[-1] == 3

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1 if self.num_frames > 1 else 0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2 if self.num_frames > 1 else 1])

    def frame(self, index: int) -> MedicalImage:
        """Frame ``index`` of a multi-frame image as a single-frame image (frame 0 of a single frame is itself)."""
        if self.num_frames == 1:
            if index != 0:
                raise IndexError(f"{self.source}: single-frame image has no frame {index}")
            return self
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"{self.source}: frame {index} out of range for {self.num_frames} frames")
        return replace(
            self, pixels=self.pixels[index], num_frames=1, metadata={**self.metadata, "frame": index % self.num_frames}
        )

    def frames(self) -> Iterator[MedicalImage]:
        for index in range(self.num_frames):
            yield self.frame(index)


@dataclass(frozen=True)
class MedicalVolume:
    """A 3-D (or 4-D, time last) volume in canonical RAS+ voxel order: axis 0 → Right, 1 → Anterior, 2 → Superior."""

    voxels: np.ndarray
    modality: str
    source: Path | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm along the voxel axes
    affine: np.ndarray | None = None  # voxel → world (RAS mm)
    window: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.voxels.shape)

    def num_slices(self, plane: Plane = "axial") -> int:
        return int(self.voxels.shape[PLANE_AXIS[plane]])

    def slice(self, index: int, plane: Plane = "axial", timepoint: int = 0) -> MedicalImage:
        """A 2-D slice in display orientation (neurological: patient right on image right; anterior/superior up)."""
        axis = PLANE_AXIS[plane]
        count = self.voxels.shape[axis]
        if not -count <= index < count:
            raise IndexError(f"{self.source}: {plane} slice {index} out of range for {count} slices")
        data = self.voxels if self.voxels.ndim == 3 else self.voxels[..., timepoint]
        # basic indexing is a view; np.take copies the whole volume first (30 ms per slice of a 197x233x189 MNI)
        plane_data = data[(slice(None),) * axis + (index,)]
        # plane_data axes are the two remaining RAS axes in increasing order; transposing puts the later one
        # (A for axial, S for coronal/sagittal) on rows, and flipping rows puts anterior/superior at the top.
        pixels = np.ascontiguousarray(plane_data.T[::-1])
        remaining = [a for a in range(3) if a != axis]
        spacing = (float(self.spacing[remaining[1]]), float(self.spacing[remaining[0]]))
        return MedicalImage(
            pixels=pixels,
            modality=self.modality,
            source=self.source,
            spacing=spacing,
            window=self.window,
            metadata={**self.metadata, "plane": plane, "slice": index % count},
        )

    def slices(self, plane: Plane = "axial", step: int = 1) -> Iterator[MedicalImage]:
        for index in range(0, self.num_slices(plane), step):
            yield self.slice(index, plane)
