"""Adapters: how `recon`, `codebook` and `probe` talk to a tokenizer, so MedITok and others share one report.

A *tokenizer adapter* has ``name``, ``encode(x) -> codes`` (anything), ``decode(codes) -> x_hat`` (float [B,3,H,W]
in [-1,1]) and ``bits_per_image(h, w)``; a *feature adapter* has ``name`` and ``features(x) -> [B, D]``. Images are
float [B,3,H,W] in [-1,1]. Load a user's own with ``--adapter package.module:factory`` (the factory is called with
no arguments, or with the text after ``=``: ``--adapter mypkg.vqgan:load=/path/ckpt``).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from meditok.evals.errors import EvalError
from meditok.tokenizer.preprocessing import quantize_uint8


@runtime_checkable
class TokenizerAdapter(Protocol):
    name: str

    def encode(self, x: torch.Tensor) -> Any: ...

    def decode(self, codes: Any) -> torch.Tensor: ...

    def bits_per_image(self, height: int, width: int) -> int: ...


@runtime_checkable
class FeatureAdapter(Protocol):
    name: str

    def features(self, x: torch.Tensor) -> torch.Tensor: ...


class MedITokAdapter:
    """MedITok through the adapter interface; ``feature`` = "features" (encoder mean) or "embed" (text-aligned)."""

    def __init__(self, tokenizer, name: str = "MedITok", feature: str = "features"):
        if feature not in ("features", "embed"):
            raise EvalError(f"feature must be 'features' or 'embed', got {feature!r}")
        self.tok, self.name, self.feature = tokenizer, name, feature

    @classmethod
    def from_path(
        cls, path: str | Path, name: str | None = None, feature: str = "features", device: str = "cpu"
    ) -> MedITokAdapter:
        return cls(load_meditok(path, device), name or f"MedITok ({Path(path).name})", feature)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.tok.encode(x)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.tok.decode(codes).float().clamp(-1, 1).cpu()

    def bits_per_image(self, height: int, width: int) -> int:
        cfg = self.tok.config
        positions = (height // cfg.patch_size) * (width // cfg.patch_size)
        return positions * cfg.num_codebooks * math.ceil(math.log2(cfg.codebook_size))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tok.features(x) if self.feature == "features" else self.tok.embed_image(x)
        return out.float().cpu()


class DownsampleBaseline:
    """Reference row: area-downsample to the largest square RGB uint8 image that fits the bit budget, then upsample
    (bicubic). At 256x256 MedITok's 256 positions x 8 codes x 12 bits = 24,576 bits = a 32x32 RGB uint8 image.
    Its features are the downsampled pixels (a "raw pixels" probe baseline)."""

    def __init__(self, bits: int = 24_576, reference_size: int = 256, name: str | None = None):
        self.bits, self.reference_size = bits, reference_size
        self.side_at_reference = max(1, int(math.isqrt(bits // 24)))
        self.name = name or f"downsample {self.side_at_reference}x{self.side_at_reference} (same bits)"

    def _side(self, height: int, width: int) -> tuple[int, int]:
        # keep the bit budget proportional to the image area, as MedITok's code count is
        scale = math.sqrt(height * width / self.reference_size**2)
        side = max(1, int(self.side_at_reference * scale))
        return side, side

    def encode(self, x: torch.Tensor) -> dict:
        h, w = self._side(*x.shape[-2:])
        small = F.interpolate(x.float(), size=(h, w), mode="area")
        return {"pixels": quantize_uint8(small), "size": tuple(x.shape[-2:])}

    def decode(self, codes: dict) -> torch.Tensor:
        small = codes["pixels"].float() / 127.5 - 1
        return F.interpolate(small, size=codes["size"], mode="bicubic", align_corners=False).clamp(-1, 1)

    def bits_per_image(self, height: int, width: int) -> int:
        h, w = self._side(height, width)
        return h * w * 3 * 8

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.encode(x)["pixels"].float() / 127.5 - 1).flatten(1)


def load_meditok(path: str | Path, device: str = "cpu"):
    from meditok.tokenizer import CheckpointError, MedITok

    path = Path(path)
    if not path.exists():
        raise EvalError(f"tokenizer weights not found: {path}")
    try:
        return MedITok.from_pretrained(path, device=device)
    except (CheckpointError, OSError, ValueError) as exc:
        raise EvalError(f"cannot load tokenizer weights {path}: {exc}") from None


def load_adapter(spec: str):
    """``package.module:factory[=argument]`` -> adapter object (checked against the protocols)."""
    target, _, argument = spec.partition("=")
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise EvalError(f"adapter spec must look like 'package.module:factory[=arg]', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EvalError(f"cannot import adapter {target!r}: {exc}") from None
    adapter = factory(argument) if argument else factory()
    if not isinstance(adapter, (TokenizerAdapter, FeatureAdapter)):
        raise EvalError(
            f"{spec!r} returned {type(adapter).__name__}, which has neither encode/decode/bits_per_image nor features"
        )
    return adapter


def batched(fn, x: torch.Tensor, batch_size: int, desc: str | None = None, progress: bool = True):
    from tqdm.auto import tqdm

    outs = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress or desc is None, unit="batch"):
        outs.append(fn(x[i : i + batch_size]))
    return outs
