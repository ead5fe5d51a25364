"""Deterministic full-size weights that both this package and the reference implementation can load.

Every tensor is drawn from its own generator seeded by the key name, so the weights do not depend on module
construction order or on either codebase's initialisation. Scales keep a 31+31-block network numerically alive
(non-degenerate codes and images), and every LayerNorm affine differs from 1/0 so that each parameter matters.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

KEYS_FILE = Path(__file__).parent / "data" / "meditok_state_dict_keys.txt"


def key_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def _generator(key: str) -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def seeded_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = _generator(key)
    if key.endswith(("zero_k_bias", "pos_embed")):
        return torch.zeros(shape)
    if key == "logit_scale":
        return torch.tensor(math.log(1 / 0.07))
    if key.endswith("vocab_usage"):
        return torch.rand(shape, generator=g) / shape[0]
    if key.endswith("codebook.weight"):
        return torch.randn(shape, generator=g)
    is_norm = any(part in key for part in ("norm", "fc_norm")) and len(shape) == 1
    if is_norm and key.endswith("weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:  # biases (and q_bias / v_bias)
        return 0.02 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    scale = 1.0 / math.sqrt(fan_in)
    if ".blocks." in key and key.endswith(("attn.proj.weight", "mlp.w2.weight")):
        scale *= 0.5  # residual branches: keep 31 stacked blocks from blowing up
    return scale * torch.randn(shape, generator=g)


def seeded_state_dict() -> dict[str, torch.Tensor]:
    return {key: seeded_tensor(key, shape) for key, shape in key_shapes().items()}
