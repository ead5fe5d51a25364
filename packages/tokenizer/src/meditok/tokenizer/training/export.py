"""Training checkpoint -> release directory, without DeepSpeed.

A checkpoint written by `Trainer.save_checkpoint` is a directory `step-N/` holding `trainer_state.json` and DeepSpeed's
per-engine folders. For ZeRO stages 0-2 the whole module state is in `generator/mp_rank_00_model_states.pt` under
`"module"` (a plain torch pickle: only tensors and containers, read here with `weights_only=True`), so exporting needs
only torch and works in an inference-only install (`meditok export CKPT OUT_DIR`).

Text alignment (stage 2, `teacher.kind: text`): the image side of the alignment is part of the tokenizer (its
`fc_norm` + `projection` give `MedITok.embed_image`; `logit_scale` is in the weights too), but the text side is not:
training maps the frozen text tower's output through trainable adapters, `text_fc_norm` (LayerNorm) then
`text_projection` (Linear, tower dim -> embed_dim), before the CLIP loss. The export writes them next to the release,
which `MedITok.from_pretrained` ignores (it reads only config.json + model.safetensors):

    text_alignment.safetensors   text_fc_norm.{weight,bias}, text_projection.{weight,bias} (fp32)
    text_alignment.json          the text tower the run used (format, path, checkpoint, context_length, output_dim),
                                 the adapter shapes, the LayerNorm eps and the logit scale (exp, as in the loss)

so that zero-shot classification (`meditok-eval zeroshot`) embeds prompts in the space training aligned:
``text = normalize(text_projection(text_fc_norm(tower.encode_text(prompts))))``, scored against
``MedITok.embed_image(x)`` (`load_text_alignment` rebuilds the adapters). Stage-1 runs (a vision teacher) have the
same-named adapters on image features; they are not text alignment and are not exported.

Precision: with `run.precision: bf16` the engine's module weights are bf16 (the fp32 master copy lives, flattened,
in the ZeRO optimizer files); the export then holds those bf16 values in fp32. For the fp32 master weights run the
checkpoint's `zero_to_fp32.py` (needs DeepSpeed) and pass its output to `MedITok.from_pretrained`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..api import MedITok
from ..atomic import write_atomic
from ..auxiliary.text_alignment import (
    TEXT_ALIGNMENT_CONFIG,
    TEXT_ALIGNMENT_KIND,
    TEXT_ALIGNMENT_VERSION,
    TEXT_ALIGNMENT_WEIGHTS,
)
from ..config import MedITokConfig
from .safe_load import safe_load

STATE_FILE = "trainer_state.json"
ADAPTER_KEYS = ("text_fc_norm.weight", "text_fc_norm.bias", "text_projection.weight", "text_projection.bias")
LOGIT_SCALE_MAX = 100.0  # the loss clamps exp(logit_scale) here
GENERATOR_STATES = Path("generator") / "mp_rank_00_model_states.pt"
DISCRIMINATOR_STATES = Path("discriminator") / "mp_rank_00_model_states.pt"


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """`step-N/` itself, or a `checkpoints/` directory (then its `latest` entry)."""
    ckpt = Path(checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint directory")
    if (ckpt / "latest").is_file() and not (ckpt / STATE_FILE).exists():
        ckpt = ckpt / (ckpt / "latest").read_text().strip()
    if not (ckpt / STATE_FILE).exists():
        raise FileNotFoundError(
            f"{ckpt} is not a MedITok training checkpoint (no {STATE_FILE}; expected OUT/checkpoints/step-N "
            "or OUT/checkpoints)"
        )
    return ckpt


def checkpoint_model_config(ckpt: str | os.PathLike, trainer_state: dict) -> MedITokConfig:
    """The checkpoint's model config, checked (`MedITokConfig`'s bounds); an error names the file and the key."""
    try:
        return MedITokConfig.from_dict(trainer_state["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{Path(ckpt) / STATE_FILE}: model_config: {exc}") from None


def _module_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a ZeRO-3 or incomplete checkpoint?)")
    return safe_load(path)["module"]


def _read_checkpoint(checkpoint: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor], dict]:
    ckpt = resolve_checkpoint(checkpoint)
    trainer_state = json.loads((ckpt / STATE_FILE).read_text())
    return ckpt, _module_state(ckpt / GENERATOR_STATES), trainer_state


def _split_module(
    ckpt: Path, module: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    core = {k[len("core.") :]: v for k, v in module.items() if k.startswith("core.")}
    disc = _module_state(ckpt / DISCRIMINATOR_STATES) if (ckpt / DISCRIMINATOR_STATES).exists() else {}
    return core, disc


def read_core_state(
    checkpoint: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(core state dict, discriminator-head state dict, trainer state) from a training checkpoint directory.
    The trainable teacher adapters (`text_fc_norm`, `text_projection`) are dropped, as the reference does (a stage-2
    export writes them separately: `text_alignment_from_checkpoint`)."""
    ckpt, module, trainer_state = _read_checkpoint(checkpoint)
    core, disc = _split_module(ckpt, module)
    return core, disc, trainer_state


def text_alignment_from_checkpoint(
    module: dict[str, torch.Tensor], trainer_state: dict, source: str = "<checkpoint>"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(adapter tensors, description) of a text-teacher run's module state, or None (no text teacher)."""
    teacher = (trainer_state.get("config") or {}).get("teacher") or {}
    if teacher.get("kind") != "text":
        return None
    missing = [k for k in ADAPTER_KEYS if k not in module]
    if missing:
        raise KeyError(f"{source}: a text-teacher checkpoint without the adapters {missing}")
    tensors = {k: module[k].detach().to("cpu", torch.float32).contiguous() for k in ADAPTER_KEYS}
    embed_dim, tower_dim = tensors["text_projection.weight"].shape
    if tuple(tensors["text_fc_norm.weight"].shape) != (tower_dim,):
        raise KeyError(f"{source}: text_fc_norm {tuple(tensors['text_fc_norm.weight'].shape)} vs projection input")
    core_scale = module.get("core.logit_scale")
    # exp(logit_scale) clamped as in the CLIP loss
    logit_scale = min(math.exp(float(core_scale)), LOGIT_SCALE_MAX) if core_scale is not None else 1 / 0.07
    model_config = trainer_state.get("model_config") or {}
    description = {
        "kind": TEXT_ALIGNMENT_KIND,
        "format_version": TEXT_ALIGNMENT_VERSION,
        "text_tower": {
            "format": teacher.get("format", "meditok"),
            "path": teacher.get("path"),
            "checkpoint": teacher.get("checkpoint"),
            "context_length": teacher.get("context_length"),
            "output_dim": int(tower_dim),
        },
        "adapters": {
            "text_fc_norm": {"type": "LayerNorm", "dim": int(tower_dim), "eps": 1e-5},
            "text_projection": {"type": "Linear", "in_features": int(tower_dim), "out_features": int(embed_dim)},
        },
        "embed_dim": int(model_config.get("embed_dim", embed_dim)),
        "logit_scale": logit_scale,
        "source": {"checkpoint": source, "stage": trainer_state.get("stage"), "step": trainer_state.get("step")},
        "usage": "text = normalize(text_projection(text_fc_norm(text_tower.encode_text(prompts)))); "
        "logits = logit_scale * MedITok.embed_image(x) @ text.T",
    }
    if description["embed_dim"] != embed_dim:
        raise KeyError(
            f"{source}: text_projection outputs {embed_dim}-d, the model's embed_dim is {description['embed_dim']}"
        )
    return tensors, description


def export_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, image_size: int | None = None
) -> Path:
    """Training checkpoint -> a `save_pretrained` directory (config.json + fp32 model.safetensors) that
    `MedITok.from_pretrained` loads; ``image_size`` is the side recorded in its image-input contract (the size its
    users, and a meditok-ar model built on it, encode at; default the reference's 256), plus, for a text-teacher (stage-2) run, `text_alignment.safetensors` +
    `text_alignment.json` (see the module docstring). Alignment files left by an earlier export into the same
    directory are removed when this checkpoint has none."""
    from safetensors.torch import save_file

    ckpt, module, state = _read_checkpoint(checkpoint)
    core, _ = _split_module(ckpt, module)
    bad = [k for k, v in core.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # before anything is written
        raise ValueError(
            f"{ckpt / GENERATOR_STATES}: not exporting: {len(bad)} of {len(core)} tensors hold NaN/inf "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); export an earlier checkpoint"
        )
    model = MedITok.from_state_dict(core, checkpoint_model_config(ckpt, state), source=str(checkpoint))
    model.image_input = model.image_input.with_overrides(size=image_size)
    alignment = text_alignment_from_checkpoint(module, state, str(ckpt))  # checked before anything is written
    out = model.save_pretrained(out_dir)
    if alignment is None:
        for name in (TEXT_ALIGNMENT_WEIGHTS, TEXT_ALIGNMENT_CONFIG):
            (out / name).unlink(missing_ok=True)
        return out
    tensors, description = alignment
    write_atomic(out, TEXT_ALIGNMENT_WEIGHTS, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    write_atomic(out, TEXT_ALIGNMENT_CONFIG, lambda p: Path(p).write_text(json.dumps(description, indent=2) + "\n"))
    return out
