"""The image-input contract: from pixels to the tokenizer's input tensor, one function for every door.

Every way into MedITok (the `meditok` CLI, `MedITok.prepare` / `tokenize`, meditok-ar's `encode_image`, `answer` and
`pretokenize`, the vLLM plugin, every `meditok-eval` command, training in eval mode) ends in `preprocess` with one
`ImageInput`, so the same image becomes the same codes whichever door it takes. Two steps:

1. Intensity, to [0, 1]. Files in physical units (CT in HU, MONOCHROME1, palette/YBR, deep grayscale) are meditok-data's
   job (`meditok.data.unit_image` / `load_unit_image`), which hands over exactly what this module accepts. In-memory
   pixels (PIL image, numpy array, torch tensor):
     * uint8 -> x / 255 (kept 8-bit through the resize, as the reference's PIL pipeline does);
     * deeper integers (uint16 X-rays, int16 CT-like data, PIL "I;16"/"I") -> `percentile_scale` with the
       `ImageInput.percentiles` bounds (0.5 / 99.5 %): 12-bit data in a 16-bit container has no fixed display range;
     * floats -> must already lie in [0, 1] (tensors in [-1, 1] go straight to `MedITok.encode`; HU arrays go through
       meditok-data); bool -> 0 / 1.
   Channels: gray (H,W) / (H,W,1) stays gray until the end and is replicated to RGB; RGBA drops alpha (as PIL's
   convert("RGB")). Tensors are channel-first ([C,H,W] or [1,C,H,W], as torchvision's ToTensor gives) or [H,W].
2. Geometry (`ImageInput.size`, `.resize`, `.resampler`), then [0, 1] -> [-1, 1]:
     "squash"  (default) resize to size x size ignoring the aspect ratio: the reference README's LANCZOS resize, so
               the same 8-bit image gives the same codes as the reference;
     "crop"    scale to cover size x size, centre crop;
     "pad"     scale to fit inside size x size, pad with black;
     "shorter" shorter side to `size`, aspect kept (the reference's eval Resize(256)), each side centre-cropped down to
               a multiple of 16;
     "native"  keep the size, centre crop each side down to a multiple of 16.
   `size` may be (height, width) for squash / crop / pad. Resampling runs in PIL (antialiased): 8-bit data as 8-bit
   images, everything else per channel in 32-bit float ("F").

The settings live in the tokenizer release's config.json (`"image_input"`, written by `save_pretrained`) and are copied
into a meditok-ar model's config.json, so a served model tokenises exactly as it was trained; every door accepts
explicit overrides.
Output helpers: `to_uint8` (round((clip(x,-1,1)+1) * 127.5); the reference truncates, which makes uint8 -> [-1,1]
-> uint8 lossy) and `psnr`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

ResizePolicy = Literal["squash", "crop", "pad", "shorter", "native"]
RESIZE_POLICIES: tuple[str, ...] = ("squash", "crop", "pad", "shorter", "native")
RESAMPLERS: dict[str, int] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
# PIL modes whose pixels are deeper than 8 bits (kept as integers, then percentile-scaled).
DEEP_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Floats this far outside [0, 1] are rounding noise and are clipped; further out is a wrong input range.
FLOAT_RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ImageInput:
    """How an image becomes tokenizer input (the reference README's defaults: LANCZOS squash to 256).

    ``ct_window`` (a meditok-data preset name such as "common" / "soft_tissue" / "lung", a (low, high) HU pair, or
    "dicom" for the file's own VOI window) and ``percentiles`` are the intensity settings meditok-data applies to files
    in physical units; ``percentiles`` also scales deep-integer pixels given in memory.
    """

    size: int | tuple[int, int] = 256
    resize: str = "squash"
    resampler: str = "lanczos"
    ct_window: str | tuple[float, float] = "common"
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise ValueError(f"image_input.size must be an int or (height, width), got {size!r}")
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            object.__setattr__(self, "size", int(size))
        else:
            raise ValueError(f"image_input.size must be an int or (height, width), got {size!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"image_input.resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"image_input.resampler must be one of {tuple(RESAMPLERS)}, got {self.resampler!r}")
        sides = self.size if isinstance(self.size, tuple) else (self.size, self.size)
        if self.resize != "native" and any(s < 16 or s % 16 for s in sides):
            raise ValueError(f"image_input.size must be positive multiples of 16, got {self.size}")
        if self.resize == "shorter" and isinstance(self.size, tuple):
            raise ValueError("image_input.resize 'shorter' takes one side length, not (height, width)")
        if isinstance(self.ct_window, (list, tuple)):
            low, high = (float(v) for v in self.ct_window)
            if not high > low:
                raise ValueError(f"image_input.ct_window (low, high) needs high > low, got {self.ct_window!r}")
            object.__setattr__(self, "ct_window", (low, high))
        elif not isinstance(self.ct_window, str):
            raise ValueError(f"image_input.ct_window must be a preset name or (low, high), got {self.ct_window!r}")
        low, high = (float(v) for v in self.percentiles)
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"image_input.percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", (low, high))

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every prepared image, or None when it depends on the image (shorter, native)."""
        if self.resize in ("shorter", "native"):
            return None
        return self.size if isinstance(self.size, tuple) else (self.size, self.size)

    def with_overrides(self, **overrides: Any) -> ImageInput:
        """A copy with the given fields replaced; None means "keep" (so CLI flags can pass through unset)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"unknown image-input settings {unknown}; known: {[f.name for f in dataclasses.fields(self)]}"
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "image_input") -> ImageInput:
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping of image-input settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown image-input settings {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None


DEFAULT_IMAGE_INPUT = ImageInput()


def parse_ct_window(text: str | None) -> str | tuple[float, float] | None:
    """A command line's ``--ct-window``: a preset name, "dicom", or "LOW,HIGH" in HU (None stays None)."""
    if text is None or "," not in text:
        return text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--ct-window {text!r}: expected a preset name, dicom, or LOW,HIGH in HU") from None
    return (low, high)


# ------------------------------------------------------------------------------------------------ intensity


def percentile_bounds(
    values: np.ndarray, lower: float = 0.5, upper: float = 99.5, max_samples: int = 1 << 18
) -> tuple[float, float]:
    """The (low, high) values `percentile_scale` maps onto [0, 1] (volumes record them per slice to undo the scaling)."""
    values = np.asarray(values, dtype=np.float32)
    sample = values
    if values.ndim >= 2 and values.size > max_samples:
        stride = int(np.ceil(np.sqrt(values.size / max_samples)))
        sample = values[::stride, ::stride]
    low, high = (float(v) for v in np.percentile(sample, [lower, upper]))
    return low, high


def percentile_scale(
    values: np.ndarray, lower: float = 0.5, upper: float = 99.5, max_samples: int = 1 << 18
) -> np.ndarray:
    """Map the [lower, upper] percentiles of ``values`` linearly onto [0, 1], clipping outside; constant -> 0.

    The one rule for grayscale without a physical scale (MR, 16-bit X-ray PNGs). Images larger than ``max_samples``
    pixels estimate the percentiles on a regular pixel grid (a 2000² X-ray: every 8th pixel in each direction), which
    is 20x faster and moves the bounds by well under 1 %.
    """
    values = np.asarray(values, dtype=np.float32)
    low, high = percentile_bounds(values, lower, upper, max_samples)
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - np.float32(low)) / np.float32(high - low), 0.0, 1.0).astype(np.float32)


def _as_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode in DEEP_PIL_MODES or image.mode in ("L", "RGB", "F"):
            return np.asarray(image)
        return np.asarray(image.convert("RGB"))  # palette, RGBA, CMYK, LA, 1: what the reference's convert does
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ValueError(
                    f"expected one image, got a batch of shape {tuple(tensor.shape)}; pass images one by one"
                )
            tensor = tensor[0]
        if tensor.ndim == 3:
            if tensor.shape[0] not in (1, 3, 4):
                raise ValueError(
                    f"tensors must be channel-first [C,H,W] with C in 1, 3, 4 (as ToTensor gives), got {tuple(tensor.shape)}"
                )
            tensor = tensor.permute(1, 2, 0)
        if tensor.dtype == torch.bfloat16 or tensor.dtype == torch.float16:
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(image, np.ndarray):
        return image
    raise TypeError(f"expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")


def unit_pixels(image: Any, percentiles: tuple[float, float] = DEFAULT_IMAGE_INPUT.percentiles) -> np.ndarray:
    """PIL / ndarray / tensor -> (H,W) or (H,W,3) pixels in [0, 1]: uint8 as is (it means x/255), else float32."""
    array = _as_array(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected a gray (H,W), RGB (H,W,3) or RGBA (H,W,4) image, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return percentile_scale(array, *percentiles)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_RANGE_TOLERANCE or high > 1.0 + FLOAT_RANGE_TOLERANCE:
            raise ValueError(
                f"float pixels must lie in [0, 1], found values in [{low:.4g}, {high:.4g}] (images already in [-1, 1] "
                "go straight to MedITok.encode; CT in HU and other physical units go through meditok.data)"
            )
        return np.clip(array, 0.0, 1.0).astype(np.float32)
    raise TypeError(f"unsupported pixel dtype {array.dtype}")


# ------------------------------------------------------------------------------------------------ geometry


def _resize(pixels: np.ndarray, height: int, width: int, resampler: str) -> np.ndarray:
    if pixels.shape[:2] == (height, width):
        return pixels
    method = RESAMPLERS[resampler]
    if pixels.dtype == np.uint8:
        return np.asarray(Image.fromarray(pixels).resize((width, height), method))
    channels = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(pixels.shape[2])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c), "F").resize((width, height), method)) for c in channels]
    resized = out[0] if pixels.ndim == 2 else np.stack(out, axis=2)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
    return pixels[top : top + height, left : left + width]


def _to_multiple_of_16(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    if height < 16 or width < 16:
        raise ValueError(f"image of {height}x{width} is smaller than one 16x16 token")
    return _center_crop(pixels, height // 16 * 16, width // 16 * 16)


def _apply_geometry(pixels: np.ndarray, spec: ImageInput) -> np.ndarray:
    height, width = pixels.shape[:2]
    if spec.resize == "native":
        return _to_multiple_of_16(pixels)
    if spec.resize == "shorter":
        side = int(spec.size)  # validated: an int
        scale = side / min(height, width)
        pixels = _resize(pixels, max(side, round(height * scale)), max(side, round(width * scale)), spec.resampler)
        return _to_multiple_of_16(pixels)
    out_h, out_w = spec.output_size  # type: ignore[misc]
    if spec.resize == "squash":
        return _resize(pixels, out_h, out_w, spec.resampler)
    if spec.resize == "crop":
        scale = max(out_h / height, out_w / width)
        pixels = _resize(pixels, max(out_h, round(height * scale)), max(out_w, round(width * scale)), spec.resampler)
        return _center_crop(pixels, out_h, out_w)
    scale = min(out_h / height, out_w / width)  # pad
    new_h, new_w = min(out_h, max(1, round(height * scale))), min(out_w, max(1, round(width * scale)))
    canvas = np.zeros((out_h, out_w, *pixels.shape[2:]), dtype=pixels.dtype)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = _resize(pixels, new_h, new_w, spec.resampler)
    return canvas


def restore_geometry(pixels: np.ndarray, height: int, width: int, spec: ImageInput) -> np.ndarray:
    """The inverse of `preprocess`'s geometry: float pixels (h, w) or (h, w, C) of a prepared image -> (height, width)
    in the original image's grid, resampled with ``spec.resampler``. Parts the prepared image never held (cut by
    ``crop``, ``shorter`` or ``native``; ``pad``'s border is dropped) come back as NaN, so callers can tell them apart."""
    pixels = np.asarray(pixels, dtype=np.float32)

    def placed(inner: np.ndarray, outer_h: int, outer_w: int) -> np.ndarray:
        canvas = np.full((outer_h, outer_w, *inner.shape[2:]), np.nan, dtype=np.float32)
        top, left = (outer_h - inner.shape[0]) // 2, (outer_w - inner.shape[1]) // 2  # as _center_crop
        canvas[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
        return canvas

    def resized(values: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
        # _resize clips to [0, 1] (its inputs are unit pixels); NaN-free values only reach it here
        if values.shape[:2] == (out_h, out_w):
            return values
        method = RESAMPLERS[spec.resampler]
        channels = [values] if values.ndim == 2 else [values[..., c] for c in range(values.shape[2])]
        out = [
            np.asarray(Image.fromarray(np.ascontiguousarray(c), "F").resize((out_w, out_h), method)) for c in channels
        ]
        return out[0] if values.ndim == 2 else np.stack(out, axis=2)

    if spec.resize == "native":
        return placed(pixels, height, width)
    if spec.resize == "squash":
        return resized(pixels, height, width)
    if spec.resize == "pad":
        out_h, out_w = spec.output_size  # type: ignore[misc]
        scale = min(out_h / height, out_w / width)
        new_h, new_w = min(out_h, max(1, round(height * scale))), min(out_w, max(1, round(width * scale)))
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        return resized(pixels[top : top + new_h, left : left + new_w], height, width)
    if spec.resize == "crop":
        out_h, out_w = spec.output_size  # type: ignore[misc]
        scale = max(out_h / height, out_w / width)
        full_h, full_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
    else:  # shorter
        side = int(spec.size)
        scale = side / min(height, width)
        full_h, full_w = max(side, round(height * scale)), max(side, round(width * scale))
    canvas = placed(pixels, full_h, full_w)
    # Resample the covered part and its mask separately, so NaN never spreads through the filter.
    covered = np.isfinite(canvas if canvas.ndim == 2 else canvas[..., 0]).astype(np.float32)
    values = resized(np.nan_to_num(canvas, nan=0.0), height, width)
    mask = resized(covered, height, width) > 0.5
    return np.where(mask if values.ndim == 2 else mask[..., None], values, np.nan).astype(np.float32)


def preprocess(image: Any, spec: ImageInput | None = None, **overrides: Any) -> torch.Tensor:
    """One image (PIL / ndarray / tensor, see the module docstring) -> float32 [1,3,H,W] in [-1, 1].

    ``spec`` defaults to the reference's settings; keyword overrides (``size=``, ``resize=``, ``resampler=``,
    ``percentiles=``) replace single fields.
    """
    spec = (spec or DEFAULT_IMAGE_INPUT).with_overrides(**overrides)
    pixels = _apply_geometry(unit_pixels(image, spec.percentiles), spec)
    unit = pixels.astype(np.float32) / np.float32(255.0) if pixels.dtype == np.uint8 else pixels
    tensor = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    tensor = tensor.unsqueeze(0).expand(3, -1, -1) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return (tensor.unsqueeze(0) * 2.0 - 1.0).contiguous()


def preprocess_batch(images: Sequence[Any], spec: ImageInput | None = None, **overrides: Any) -> torch.Tensor:
    tensors = [preprocess(image, spec, **overrides) for image in images]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"images preprocess to different shapes {sorted(shapes)}; use a fixed-size resize policy")
    return torch.cat(tensors)


# ------------------------------------------------------------------------------------------------ output


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1,1] -> uint8 tensor of the same shape: round((clip(x,-1,1)+1) * 127.5).

    The project's one [-1,1] -> 8-bit conversion (reports, metrics, saved PNGs, the FID network's input)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] or [3,H,W] in [-1,1] -> uint8 numpy [B,H,W,3] or [H,W,3] (`quantize_uint8`, channels last)."""
    return np.moveaxis(quantize_uint8(x).cpu().numpy(), -3, -1)


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    array = to_uint8(x if x.ndim == 4 else x.unsqueeze(0))
    return [Image.fromarray(a) for a in array]


def psnr(a: torch.Tensor, b: torch.Tensor, per_image: bool = False) -> float | torch.Tensor:
    """PSNR in dB of images in [-1,1]: 10 log10(4 / MSE) per image (peak-to-peak 2), identical images -> inf.

    The project's one PSNR. [-1,1] -> [0,255] is affine, so this equals the usual 8-bit PSNR (peak 255) of the same
    images; reports apply it to `quantize_uint8`-ed images (what a viewer shows). ``per_image``: a [B] tensor instead
    of the mean over the batch.
    """
    a4, b4 = (t.detach().double() if t.ndim == 4 else t.detach().double().unsqueeze(0) for t in (a, b))
    mse = ((a4 - b4) ** 2).flatten(1).mean(1)
    values = 10 * torch.log10(4.0 / mse)  # mse 0 -> inf
    return values if per_image else float(values.mean())
