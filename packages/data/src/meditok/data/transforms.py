"""Intensity mapping and geometry from a `MedicalImage` to the tokenizer input: float [3, H, W] in [-1, 1].

The functions are pure (randomness comes in through an explicit ``torch.Generator``) so they can be tested against
hand-computed values. `Preprocess` composes them with the reference's defaults (spec §2.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage
from meditok.tokenizer.preprocessing import (
    DEFAULT_IMAGE_INPUT,
    ImageInput,
    percentile_bounds,
    percentile_scale,
    preprocess,
)


class Window(NamedTuple):
    """An intensity window [low, high] (HU for CT)."""

    low: float
    high: float

    @classmethod
    def from_level_width(cls, level: float, width: float) -> Window:
        return cls(level - width / 2.0, level + width / 2.0)

    @property
    def level(self) -> float:
        return (self.low + self.high) / 2.0

    @property
    def width(self) -> float:
        return self.high - self.low


# The reference's presets (spec §2.2) as (low, high) HU.
CT_WINDOWS: dict[str, Window] = {
    "full": Window(-1000.0, 2000.0),
    "common": Window(-1000.0, 1000.0),
    "soft_tissue": Window(-150.0, 250.0),
    "lung": Window(-1400.0, 200.0),
    "bone": Window(-500.0, 1300.0),
}
# Probabilities of each preset when a random window is drawn (same order as CT_WINDOWS).
CT_WINDOW_PROBABILITIES: dict[str, float] = {
    "full": 0.2,
    "common": 0.3,
    "soft_tissue": 0.3,
    "lung": 0.15,
    "bone": 0.05,
}
RANDOM_WINDOW_PROBABILITY = 0.5
DEFAULT_CT_WINDOW = CT_WINDOWS["common"]


# ------------------------------------------------------------------------------------------------ intensities


def apply_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [-1, 1], clipping outside."""
    if high <= low:
        raise ValueError(f"window high ({high}) must exceed low ({low})")
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(low)) * np.float32(2.0 / (high - low)) - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def window_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [0, 1], clipping outside (the unit form of `apply_window`)."""
    if high <= low:
        raise ValueError(f"window high ({high}) must exceed low ({low})")
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def resolve_ct_window(window: str | Window | tuple[float, float]) -> Window:
    """A preset name ("lung"), a `Window`, or a (low, high) pair."""
    if isinstance(window, str):
        key = window.lower().replace("-", "_").replace(" ", "_")
        if key not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; presets: {sorted(CT_WINDOWS)}")
        return CT_WINDOWS[key]
    return Window(float(window[0]), float(window[1]))


def sample_ct_window(generator: torch.Generator | None = None, p_random: float = RANDOM_WINDOW_PROBABILITY) -> Window:
    """The reference's augmentation: with ``p_random`` a preset drawn by CT_WINDOW_PROBABILITIES, else "common"."""
    if float(torch.rand((), generator=generator)) >= p_random:
        return DEFAULT_CT_WINDOW
    weights = torch.tensor(list(CT_WINDOW_PROBABILITIES.values()), dtype=torch.float64)
    choice = int(torch.multinomial(weights, 1, generator=generator))
    return CT_WINDOWS[list(CT_WINDOW_PROBABILITIES)[choice]]


def percentile_normalize(values: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """[-1, 1] form of the tokenizer's `percentile_scale` (the one percentile rule; a constant image maps to -1)."""
    return percentile_scale(values, lower, upper) * np.float32(2.0) - np.float32(1.0)


def uint8_to_unit(values: np.ndarray) -> np.ndarray:
    """The reference's mapping of 8-bit data: x / 127.5 - 1."""
    return (np.asarray(values, dtype=np.float32) / np.float32(127.5) - 1.0).astype(np.float32)


def in_hounsfield_units(image: MedicalImage) -> bool:
    """CT pixels are HU when they come from DICOM / NIfTI / .inv3 or from a raster read with ``ct_bias``; an 8-bit
    CT picture (a screenshot, MedMNIST's OrganMNIST) is a display image already and is not windowed again."""
    if image.modality != "ct" or image.is_rgb or image.pixels.dtype == np.uint8:
        return False
    return image.metadata.get("ct_bias", None) != 0


def intensity_window(
    image: MedicalImage, ct_window: str | Window | tuple[float, float], use_dicom_window: bool = False
) -> Window | None:
    """The window an image's intensities go through, or None when it has none (8-bit, RGB, deep non-CT grayscale)."""
    if image.is_rgb:
        return None
    if in_hounsfield_units(image):
        if isinstance(ct_window, str) and ct_window.lower() == "dicom":
            return Window.from_level_width(*image.window) if image.window is not None else DEFAULT_CT_WINDOW
        return resolve_ct_window(ct_window)
    if use_dicom_window and image.window is not None:
        return Window.from_level_width(*image.window)
    return None


def unit_image(
    image: MedicalImage, spec: ImageInput | None = None, *, use_dicom_window: bool = False, **overrides: Any
) -> np.ndarray:
    """A file's pixels in physical units -> what the tokenizer's `preprocess` takes: (H, W) or (H, W, 3) in [0, 1].

    CT in HU is windowed (``spec.ct_window``: a preset, (low, high) or "dicom" for the file's VOI window); 8-bit data
    comes back as uint8 (meaning x/255, resized as 8-bit like the reference); anything deeper (MR, 16-bit X-ray,
    RGB16) is percentile-scaled with ``spec.percentiles``. MONOCHROME1, palette and YBR were resolved by the reader.
    Non-finite pixels (a NaN voxel) are a `MedicalImageError`, never a silently all-NaN image.
    """
    spec = (spec or DEFAULT_IMAGE_INPUT).with_overrides(**overrides)
    if image.num_frames > 1:
        raise MedicalImageError(image.source, f"{image.num_frames}-frame image: select one with .frame(i) first")
    pixels = image.pixels
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        count = int((~np.isfinite(pixels)).sum())
        raise MedicalImageError(image.source, f"{count} non-finite pixel value(s) (NaN or infinity)")
    try:
        window = intensity_window(image, spec.ct_window, use_dicom_window)
    except ValueError as exc:
        raise MedicalImageError(image.source, str(exc)) from None
    if window is not None:
        return window_to_unit(pixels, window.low, window.high)
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        raise MedicalImageError(image.source, f"expected a gray (H,W) or RGB (H,W,3) image, got shape {pixels.shape}")
    return percentile_scale(pixels, *spec.percentiles)


def intensity_bounds(
    image: MedicalImage, spec: ImageInput | None = None, *, use_dicom_window: bool = False
) -> tuple[float, float]:
    """The (low, high) in the image's own units that `unit_image` maps onto [0, 1]: the CT window, (0, 255) for 8-bit
    data (x/255), else the ``spec.percentiles`` of the pixels. A volume records them per slice so that a
    reconstruction can be written back in HU or the file's units (low + unit * (high - low))."""
    spec = spec or DEFAULT_IMAGE_INPUT
    try:
        window = intensity_window(image, spec.ct_window, use_dicom_window)
    except ValueError as exc:
        raise MedicalImageError(image.source, str(exc)) from None
    if window is not None:
        return float(window.low), float(window.high)
    if image.pixels.dtype == np.uint8:
        return 0.0, 255.0
    return percentile_bounds(image.pixels, *spec.percentiles)


def normalize_intensity(
    image: MedicalImage,
    *,
    ct_window: str | Window | tuple[float, float] | None = None,
    use_dicom_window: bool = False,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """`unit_image` in [-1, 1] as float32 (the training augmentations work on this form)."""
    window = ct_window if ct_window is not None else ("dicom" if use_dicom_window else DEFAULT_IMAGE_INPUT.ct_window)
    if isinstance(window, Window):
        window = (window.low, window.high)
    spec = DEFAULT_IMAGE_INPUT.with_overrides(ct_window=window, percentiles=percentiles)
    unit = unit_image(image, spec, use_dicom_window=use_dicom_window)
    if unit.dtype == np.uint8:
        return uint8_to_unit(unit)
    return unit * np.float32(2.0) - np.float32(1.0)


def to_chw_tensor(values: np.ndarray, channels: int = 3) -> torch.Tensor:
    """(H, W) → repeated to 3 channels; (H, W, C) → first 3 channels (reference rule), as a [3, H, W] tensor.

    ``channels=1`` keeps grayscale as [1, H, W] (geometry is 3× cheaper on one channel; see `expand_to_rgb`)."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 2:
        values = values[None] if channels == 1 else np.repeat(values[None], 3, axis=0)
    elif values.ndim == 3:
        channels = values.shape[-1]
        if channels == 1:
            values = np.repeat(values[..., 0][None], 3, axis=0)
        elif channels >= 3:
            values = np.moveaxis(values[..., :3], -1, 0)
        else:
            raise ValueError(f"cannot make 3 channels from shape {values.shape}")
    else:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {values.shape}")
    return torch.from_numpy(np.ascontiguousarray(values))


def expand_to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    """[1, H, W] → [3, H, W] (a copy, so later in-place ops on one channel cannot alias the others)."""
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


# ------------------------------------------------------------------------------------------------ geometry


def resize(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a [C, H, W] tensor (antialias matters for 2000-px X-rays → 256)."""
    if tuple(tensor.shape[-2:]) == (height, width):
        return tensor
    out = F.interpolate(tensor[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    return out.clamp_(-1.0, 1.0)


# ------------------------------------------------------------------------------------------------ augmentation


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w), torchvision's RandomResizedCrop.get_params algorithm (10 tries, then centre)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w, crop_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        crop_h, crop_w = height, round(height * max(ratio))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(
    tensor: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.9, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    top, left, crop_h, crop_w = random_resized_crop_box(tensor.shape[-2], tensor.shape[-1], scale, generator=generator)
    return resize(tensor[..., top : top + crop_h, left : left + crop_w], size, size)


def rgb_to_grayscale(tensor: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma replicated to 3 channels (torchvision's Grayscale(3) weights)."""
    if tensor.shape[0] == 1:
        return expand_to_rgb(tensor)
    luma = 0.2989 * tensor[0] + 0.587 * tensor[1] + 0.114 * tensor[2]
    return luma.expand(3, -1, -1).contiguous()


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return float(torch.rand((), generator=generator)) < p


def train_augment(
    tensor: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.9, 1.0),
    p_flip: float = 0.5,
    p_rot90: float = 0.5,
    p_grayscale: float = 0.1,
) -> torch.Tensor:
    """The reference's training transform: RandomResizedCrop(size, scale 0.9–1), H/V flips, ±90° rotation,
    3-channel grayscale, applied to the whole image as the reference does; the output is [3, size, size]."""
    out = random_resized_crop(tensor, size, scale, generator)
    if _coin(p_flip, generator):
        out = out.flip(-1)
    if _coin(p_flip, generator):
        out = out.flip(-2)
    if _coin(p_rot90, generator):
        out = torch.rot90(out, 1 if _coin(0.5, generator) else -1, dims=(-2, -1))
    if _coin(p_grayscale, generator):
        out = rgb_to_grayscale(out)
    return out.contiguous()


# ------------------------------------------------------------------------------------------------ composition


@dataclass(frozen=True)
class Preprocess:
    """MedicalImage → float [3, H, W] in [-1, 1] for the tokenizer.

    Eval mode is the image-input contract itself: `unit_image` (intensity) then the tokenizer's `preprocess`
    (geometry), the same two functions every door uses, with the settings of `spec` (LANCZOS squash to 256 by default).
    ``train`` turns on the reference's augmentations instead: the random CT window, RandomResizedCrop (bilinear,
    antialiased), flips, ±90° rotation and grayscale.
    """

    size: int | tuple[int, int] = 256
    resize: str = "squash"
    train: bool = False
    ct_window: str | tuple[float, float] | None = None
    random_ct_window: bool | None = None  # default: on when training and no fixed ct_window
    use_dicom_window: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)
    resampler: str = "lanczos"

    @classmethod
    def from_spec(cls, spec: ImageInput, **options: Any) -> Preprocess:
        """The eval transform of a recorded `ImageInput` (a tokenizer's or AR model's config.json)."""
        return cls(size=spec.size, resize=spec.resize, ct_window=spec.ct_window, percentiles=spec.percentiles,
                   resampler=spec.resampler, **options)  # fmt: skip

    @property
    def spec(self) -> ImageInput:
        return ImageInput(
            size=self.size,
            resize=self.resize,
            resampler=self.resampler,
            ct_window=self.ct_window if self.ct_window is not None else DEFAULT_IMAGE_INPUT.ct_window,
            percentiles=self.percentiles,
        )

    def __call__(self, image: MedicalImage, generator: torch.Generator | None = None) -> torch.Tensor:
        try:
            spec = self.spec
        except ValueError as exc:
            raise MedicalImageError(image.source, str(exc)) from None
        if not self.train:
            try:
                return preprocess(unit_image(image, spec, use_dicom_window=self.use_dicom_window), spec)[0]
            except ValueError as exc:
                raise MedicalImageError(image.source, str(exc)) from None
        window: str | Window | tuple[float, float] | None = self.ct_window
        random_window = self.random_ct_window if self.random_ct_window is not None else window is None
        if image.modality == "ct" and random_window:
            window = sample_ct_window(generator)
        try:
            values = normalize_intensity(
                image, ct_window=window, use_dicom_window=self.use_dicom_window, percentiles=self.percentiles
            )
            tensor = to_chw_tensor(values, channels=1)
        except ValueError as exc:
            raise MedicalImageError(image.source, str(exc)) from None
        side = self.size if isinstance(self.size, int) else max(self.size)
        return expand_to_rgb(train_augment(tensor, side, generator))
