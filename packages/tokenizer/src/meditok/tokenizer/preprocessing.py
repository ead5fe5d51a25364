"""From PIL images / numpy arrays to the tokenizer's input tensor and back.

Input policy (documented contract):
  * intensities: uint8 -> x/255; uint16 and other integer types -> min-max over the image (12-bit x-rays and CTs
    arrive in 16-bit containers, so a fixed /65535 would make them nearly black); float arrays are taken to be in
    [0, 1] already and are clipped. Then [0,1] -> [-1,1]. (Modality-aware windowing, e.g. CT in Hounsfield units,
    is meditok-data's job.)
  * channels: gray (H,W) or (H,W,1) is replicated to RGB; RGBA drops alpha (as PIL's convert('RGB') does); RGB as is.
  * size, `resize=`:
      "squash"  (default) resize to size x size ignoring the aspect ratio - what the reference does, so the same
                image gives the same codes as the reference (PIL LANCZOS on 8-bit images);
      "crop"    shorter side to `size`, then centre crop to size x size;
      "pad"     longer side to `size`, then pad to a square with black (value -1);
      "native"  keep the size, centre crop each side down to a multiple of 16 (non-square images stay non-square).
Output: uint8 = round((clip(x,-1,1)+1) * 127.5). (The reference truncates, which turns uint8 -> [-1,1] -> uint8
into a lossy round trip through float error; rounding makes it exact, and differs from the reference by at most 1.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

ResizePolicy = Literal["squash", "crop", "pad", "native"]
RESIZE_POLICIES = ("squash", "crop", "pad", "native")


def _as_float_rgb(image: Image.Image | np.ndarray) -> tuple[np.ndarray, bool]:
    """Return (H,W,3) float32 in [0,1] and whether the source was 8-bit (resampled through PIL as the reference)."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image)
        else:
            array = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected a gray (H,W), RGB (H,W,3) or RGBA (H,W,4) image, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    if array.dtype == np.uint8:
        scaled, eight_bit = array.astype(np.float32) / 255.0, True
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        array = array.astype(np.float64)
        low, high = float(array.min()), float(array.max())
        scaled, eight_bit = (
            ((array - low) / (high - low) if high > low else np.zeros_like(array)).astype(np.float32),
            False,
        )
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values")
        scaled, eight_bit = np.clip(array, 0.0, 1.0).astype(np.float32), False
    else:
        raise TypeError(f"unsupported pixel dtype {array.dtype}")
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=2)
    return scaled, eight_bit


def _resize(rgb: np.ndarray, eight_bit: bool, width: int, height: int) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == (width, height):
        return rgb
    if eight_bit:
        pil = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
        return np.asarray(pil.resize((width, height), Image.LANCZOS), dtype=np.float32) / 255.0
    channels = [
        np.asarray(Image.fromarray(rgb[..., c]).resize((width, height), Image.LANCZOS), dtype=np.float32)
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0)


def _center_crop(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    return rgb[top : top + height, left : left + width]


def preprocess(image: Image.Image | np.ndarray, size: int = 256, resize: ResizePolicy = "squash") -> torch.Tensor:
    """One image -> float32 [1,3,H,W] in [-1,1] (see the module docstring for the policy)."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    if resize != "native" and (size < 16 or size % 16):
        raise ValueError(f"size must be a positive multiple of 16, got {size}")
    rgb, eight_bit = _as_float_rgb(image)
    height, width = rgb.shape[:2]
    if resize == "squash":
        rgb = _resize(rgb, eight_bit, size, size)
    elif resize == "crop":
        scale = size / min(height, width)
        rgb = _resize(rgb, eight_bit, max(size, round(width * scale)), max(size, round(height * scale)))
        rgb = _center_crop(rgb, size, size)
    elif resize == "pad":
        scale = size / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = np.zeros((size, size, 3), dtype=np.float32)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = _resize(rgb, eight_bit, new_w, new_h)
        rgb = canvas
    else:
        if height < 16 or width < 16:
            raise ValueError(f"image of {height}x{width} is smaller than one 16x16 token")
        rgb = _center_crop(rgb, height // 16 * 16, width // 16 * 16)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    return tensor * 2.0 - 1.0


def preprocess_batch(
    images: Sequence[Image.Image | np.ndarray], size: int = 256, resize: ResizePolicy = "squash"
) -> torch.Tensor:
    tensors = [preprocess(image, size, resize) for image in images]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"images preprocess to different shapes {sorted(shapes)}; use a fixed-size resize policy")
    return torch.cat(tensors)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] or [3,H,W] in [-1,1] -> uint8 [B,H,W,3] or [H,W,3]."""
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().cpu().numpy().astype(np.uint8)
    return np.moveaxis(array, -3, -1)


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    array = to_uint8(x if x.ndim == 4 else x.unsqueeze(0))
    return [Image.fromarray(a) for a in array]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1,1] (peak-to-peak 2)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)
