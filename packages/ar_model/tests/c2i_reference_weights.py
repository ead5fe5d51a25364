"""Deterministic weights for the class-conditional GPT (meditok.ar.c2i) that the reference implementation loads too.

Every tensor comes from its own generator seeded by its key name, so the weights depend neither on module order nor
on either codebase's initialisation; `data/c2i_reference_small.json` holds the key names and shapes (dumped from the
reference model) and `data/README.md` says how the reference outputs were made from these weights. The scales keep
logits well apart (the reference initialises the output head to zero, which would make every greedy choice a tie).
"""

from __future__ import annotations

import hashlib
import math

import torch


def _generator(key: str) -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def seeded_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = _generator(key)
    if len(shape) == 1 and key.endswith("norm.weight"):  # RMSNorm gains: not all 1, so each one matters
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:  # the output head's bias
        return 0.1 * torch.randn(shape, generator=g)
    if "embedding" in key or "codebooks" in key:  # embedding tables: unit-scale rows, as after training
        return torch.randn(shape, generator=g)
    scale = 1.0 / math.sqrt(shape[1])
    if key.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
        scale *= 0.5  # residual branches
    if key.endswith("linear_head.weight"):
        scale *= 3.0  # logits a few units apart: greedy choices far from ties in float32
    return scale * torch.randn(shape, generator=g)


def seeded_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: seeded_tensor(key, tuple(shape)) for key, shape in shapes.items()}
