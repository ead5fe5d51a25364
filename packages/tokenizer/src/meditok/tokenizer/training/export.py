"""Training checkpoint -> release directory, without DeepSpeed.

A checkpoint written by `Trainer.save_checkpoint` is a directory `step-N/` holding `trainer_state.json` and DeepSpeed's
per-engine folders. For ZeRO stages 0-2 the whole module state is in `generator/mp_rank_00_model_states.pt` under
`"module"` (a plain torch pickle: only tensors and containers, read here with `weights_only=True`), so exporting needs
only torch and works in an inference-only install (`meditok export CKPT OUT_DIR`).

Precision: with `run.precision: bf16` the engine's module weights are bf16 (the fp32 master copy lives, flattened,
in the ZeRO optimizer files); the export then holds those bf16 values in fp32. For the fp32 master weights run the
checkpoint's `zero_to_fp32.py` (needs DeepSpeed) and pass its output to `MedITok.from_pretrained`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..api import MedITok
from ..config import MedITokConfig

STATE_FILE = "trainer_state.json"
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


def _module_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a ZeRO-3 or incomplete checkpoint?)")
    return torch.load(path, map_location="cpu", weights_only=True)["module"]


def read_core_state(
    checkpoint: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(core state dict, discriminator-head state dict, trainer state) from a training checkpoint directory.
    The trainable teacher adapters (`text_fc_norm`, `text_projection`) are dropped, as the reference does."""
    ckpt = resolve_checkpoint(checkpoint)
    trainer_state = json.loads((ckpt / STATE_FILE).read_text())
    module = _module_state(ckpt / GENERATOR_STATES)
    core = {k[len("core.") :]: v for k, v in module.items() if k.startswith("core.")}
    disc = _module_state(ckpt / DISCRIMINATOR_STATES) if (ckpt / DISCRIMINATOR_STATES).exists() else {}
    return core, disc, trainer_state


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Training checkpoint -> a `save_pretrained` directory (config.json + fp32 model.safetensors) that
    `MedITok.from_pretrained` loads."""
    core, _, state = read_core_state(checkpoint)
    model = MedITok.from_state_dict(core, MedITokConfig.from_dict(state["model_config"]), source=str(checkpoint))
    return model.save_pretrained(out_dir)
