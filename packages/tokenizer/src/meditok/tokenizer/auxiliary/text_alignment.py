"""Reading a release's text alignment back (written by `meditok export` from a stage-2, text-teacher checkpoint;
see `meditok.tokenizer.training.export`): the text-side adapters that map text-tower features into the space of
`MedITok.embed_image`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

TEXT_ALIGNMENT_WEIGHTS = "text_alignment.safetensors"
TEXT_ALIGNMENT_CONFIG = "text_alignment.json"
TEXT_ALIGNMENT_KIND = "meditok-text-alignment"
TEXT_ALIGNMENT_VERSION = 1


class TextAlignmentError(ValueError):
    pass


class TextAlignment(nn.Module):
    """The exported text-side adapters: text-tower features [N, D] -> l2-normalised embeddings [N, embed_dim] in the
    space of `MedITok.embed_image` (as training's `teacher_embedding`). `description` is text_alignment.json."""

    def __init__(self, description: dict[str, Any]):
        super().__init__()
        norm, proj = description["adapters"]["text_fc_norm"], description["adapters"]["text_projection"]
        self.description = description
        self.path: str | None = None  # the directory it was read from
        self.text_fc_norm = nn.LayerNorm(int(norm["dim"]), eps=float(norm.get("eps", 1e-5)))
        self.text_projection = nn.Linear(int(proj["in_features"]), int(proj["out_features"]))

    @property
    def input_dim(self) -> int:
        return self.text_projection.in_features

    @property
    def embed_dim(self) -> int:
        return self.text_projection.out_features

    @property
    def logit_scale(self) -> float:
        return float(self.description["logit_scale"])

    @property
    def text_tower(self) -> dict[str, Any]:
        return dict(self.description.get("text_tower") or {})

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.text_projection.weight.dtype)
        return torch.nn.functional.normalize(self.text_projection(self.text_fc_norm(x)).float(), dim=-1)


def find_text_alignment(path: str | os.PathLike) -> Path | None:
    """The directory holding text_alignment.json: `path` itself (a release directory or the JSON file)."""
    p = Path(path)
    if p.is_file() and p.name == TEXT_ALIGNMENT_CONFIG:
        p = p.parent
    return p if p.is_dir() and (p / TEXT_ALIGNMENT_CONFIG).is_file() else None


def load_text_alignment(path: str | os.PathLike) -> TextAlignment:
    """Read text_alignment.json + text_alignment.safetensors from a release directory (strict: every tensor, every
    shape); raises `TextAlignmentError` naming the file."""
    from safetensors.torch import load_file

    p = Path(path)
    directory = find_text_alignment(p)
    if directory is None:
        raise TextAlignmentError(
            f"{p}: no {TEXT_ALIGNMENT_CONFIG} (export a stage-2, text-teacher checkpoint with `meditok export`)"
        )
    config_file, weights = directory / TEXT_ALIGNMENT_CONFIG, directory / TEXT_ALIGNMENT_WEIGHTS
    try:
        description = json.loads(config_file.read_text())
        if description.get("kind") != TEXT_ALIGNMENT_KIND:
            raise TextAlignmentError(f"{config_file}: kind {description.get('kind')!r}, not {TEXT_ALIGNMENT_KIND!r}")
        if int(description.get("format_version", 0)) > TEXT_ALIGNMENT_VERSION:
            raise TextAlignmentError(
                f"{config_file}: format_version {description['format_version']} is newer than this reader "
                f"({TEXT_ALIGNMENT_VERSION})"
            )
        module = TextAlignment(description)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, TextAlignmentError):
            raise
        raise TextAlignmentError(f"{config_file}: not a text-alignment description ({exc})") from None
    if not weights.is_file():
        raise TextAlignmentError(f"{weights}: missing (it belongs with {config_file.name})")
    state = load_file(str(weights))
    expected = module.state_dict()
    wrong = sorted(set(state) ^ set(expected)) + sorted(
        f"{k}: file {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if wrong:
        raise TextAlignmentError(f"{weights} does not match {config_file.name}: {wrong[:5]}")
    module.load_state_dict(state)
    module.path = str(directory)
    return module.eval().requires_grad_(False)
