"""Intensity mapping and geometry from a `MedicalImage` to the tokenizer input: float [3, H, W] in [-1, 1].

The functions are pure (randomness comes in through an explicit ``torch.Generator``) so they can be tested against
hand-computed values. `Preprocess` composes them with the reference's defaults (spec §2.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from meditok.data.errors import MedicalImageError
from meditok.data.image import MedicalImage


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

ResizePolicy = Literal["crop", "pad", "squash", "shorter"]


# ------------------------------------------------------------------------------------------------ intensities


def apply_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [-1, 1], clipping outside."""
    if high <= low:
        raise ValueError(f"window high ({high}) must exceed low ({low})")
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(low)) * np.float32(2.0 / (high - low)) - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


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


def percentile_normalize(
    values: np.ndarray, lower: float = 0.5, upper: float = 99.5, max_samples: int = 1 << 18
) -> np.ndarray:
    """Map the [lower, upper] percentiles onto [-1, 1] (MR has no absolute scale); a constant image maps to -1.

    Images larger than ``max_samples`` pixels estimate the percentiles on a regular pixel grid (a 2000² X-ray:
    every 8th pixel in each direction), which is 20× faster and moves the bounds by well under 1 %.
    """
    values = np.asarray(values, dtype=np.float32)
    sample = values
    if values.ndim >= 2 and values.size > max_samples:
        stride = int(np.ceil(np.sqrt(values.size / max_samples)))
        sample = values[::stride, ::stride]
    low, high = np.percentile(sample, [lower, upper])
    if high <= low:
        return np.full(values.shape, -1.0, dtype=np.float32)
    return apply_window(values, float(low), float(high))


def uint8_to_unit(values: np.ndarray) -> np.ndarray:
    """The reference's mapping of 8-bit data: x / 127.5 - 1."""
    return (np.asarray(values, dtype=np.float32) / np.float32(127.5) - 1.0).astype(np.float32)


def normalize_intensity(
    image: MedicalImage,
    *,
    ct_window: str | Window | tuple[float, float] | None = None,
    use_dicom_window: bool = False,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Pixels → float32 in [-1, 1], shape (H, W) or (H, W, 3).

    CT (grayscale) is windowed (``ct_window``, else the file's DICOM window when ``use_dicom_window``, else
    "common"). Other 8-bit data is already display-ready and maps as x/127.5−1 like the reference; deeper
    grayscale data (MR, 16-bit X-ray, ...) uses the DICOM window when asked, else percentile normalisation.
    """
    if image.num_frames > 1:
        raise MedicalImageError(image.source, f"{image.num_frames}-frame image: select one with .frame(i) first")
    pixels = image.pixels
    if image.is_rgb:
        if pixels.dtype == np.uint8:
            return uint8_to_unit(pixels)
        top = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else float(pixels.max())
        return apply_window(pixels, 0.0, max(top, 1e-6))
    if image.modality == "ct":
        if ct_window is not None:
            window = resolve_ct_window(ct_window)
        elif use_dicom_window and image.window is not None:
            window = Window.from_level_width(*image.window)
        else:
            window = DEFAULT_CT_WINDOW
        return apply_window(pixels, window.low, window.high)
    if use_dicom_window and image.window is not None:
        window = Window.from_level_width(*image.window)
        return apply_window(pixels, window.low, window.high)
    if pixels.dtype == np.uint8:
        return uint8_to_unit(pixels)
    return percentile_normalize(pixels, *percentiles)


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


def resize_shorter_side(tensor: torch.Tensor, size: int) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    scale = size / min(height, width)
    return resize(tensor, max(size, round(height * scale)), max(size, round(width * scale)))


def center_crop(tensor: torch.Tensor, size: int) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {height}x{width} to {size}x{size}")
    top = (height - size) // 2
    left = (width - size) // 2
    return tensor[..., top : top + size, left : left + size]


def pad_to_square(tensor: torch.Tensor, size: int, fill: float = -1.0) -> torch.Tensor:
    """Resize the longer side to ``size`` and pad the shorter symmetrically with ``fill`` (-1 = black)."""
    height, width = tensor.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = resize(tensor, new_h, new_w)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(resized, (left, size - new_w - left, top, size - new_h - top), value=fill)


def apply_resize_policy(tensor: torch.Tensor, size: int, policy: ResizePolicy) -> torch.Tensor:
    if policy == "crop":
        return center_crop(resize_shorter_side(tensor, size), size)
    if policy == "pad":
        return pad_to_square(tensor, size)
    if policy == "squash":
        return resize(tensor, size, size)
    if policy == "shorter":  # the reference's eval transform: Resize(size) on the shorter side, no crop
        return resize_shorter_side(tensor, size)
    raise ValueError(f"unknown resize policy {policy!r}; use crop, pad, squash or shorter")


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
    """MedicalImage → float [3, size, size] in [-1, 1] for the tokenizer.

    ``train`` turns on the reference's augmentations, including the random CT window; evaluation uses
    ``resize`` ("crop" by default; "shorter" reproduces the reference's eval Resize without crop).
    """

    size: int = 256
    resize: ResizePolicy = "crop"
    train: bool = False
    ct_window: str | tuple[float, float] | None = None
    random_ct_window: bool | None = None  # default: on when training and no fixed ct_window
    use_dicom_window: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __call__(self, image: MedicalImage, generator: torch.Generator | None = None) -> torch.Tensor:
        window: str | Window | tuple[float, float] | None = self.ct_window
        random_window = self.random_ct_window if self.random_ct_window is not None else (self.train and window is None)
        if image.modality == "ct" and random_window:
            window = sample_ct_window(generator)
        try:
            values = normalize_intensity(
                image, ct_window=window, use_dicom_window=self.use_dicom_window, percentiles=self.percentiles
            )
            tensor = to_chw_tensor(values, channels=1)
        except ValueError as exc:
            raise MedicalImageError(image.source, str(exc)) from None
        if self.train:
            return expand_to_rgb(train_augment(tensor, self.size, generator))
        return expand_to_rgb(apply_resize_policy(tensor, self.size, self.resize)).contiguous()
