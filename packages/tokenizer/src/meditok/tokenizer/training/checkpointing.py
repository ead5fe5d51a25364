"""Training checkpoints of the tokenizer trainer: a directory ``checkpoints/step-N/`` with DeepSpeed's per-engine
folders (``generator``, ``discriminator``), one ``rankNNNNN_state.pt`` per rank (step, epoch, RNG, data position,
codebook usage counters) and ``trainer_state.json`` (world size, stage, model and run config); ``checkpoints/latest``
names the newest. Written to ``.tmp-step-N`` and renamed, so a crash never leaves a half checkpoint.
`meditok.tokenizer.training.export` turns one into a release without DeepSpeed."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from .export import STATE_FILE
from .runlog import LOG_NAME, DiskError, free_space, truncate_after
from .safe_load import check_checkpoint, deepspeed_safe_loading, safe_load

if TYPE_CHECKING:
    from .trainer import Trainer


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(trainer: Trainer) -> Path:
    """Both engines + per-rank RNG/data state into `.tmp-step-N`, then one rename to `step-N` (atomic); keeps the
    last ``run.keep_last``. Every rank calls it."""
    from .trainer import NonFiniteError, all_ranks_true, first_nonfinite

    engines = [trainer.gen_engine] + ([trainer.disc_engine] if trainer.disc_engine is not None else [])
    bad = None
    for engine in engines:
        bad = bad or first_nonfinite(list(engine.module.named_parameters()) + list(engine.module.named_buffers()))
    if not all_ranks_true(bad is None, trainer.device):  # before anything is written: the last good one stays
        raise NonFiniteError(
            f"step {trainer.step}: not saving a checkpoint: the weights hold NaN/inf"
            + (f" ({bad})" if bad else " (on another rank)")
            + "; the last checkpoint in "
            f"{trainer.ckpt_dir} holds finite weights"
        )
    name = f"step-{trainer.step:08d}"
    tmp, final = trainer.ckpt_dir / f".tmp-{name}", trainer.ckpt_dir / name
    try:
        _save(trainer, name, tmp, final)
    except (OSError, RuntimeError) as exc:  # a full disk: OSError, or torch's "basic_ios::clear: iostream error"
        shutil.rmtree(tmp, ignore_errors=True)  # no partial .tmp-* left behind
        latest = trainer.ckpt_dir / "latest"
        kept = latest.read_text().strip() if latest.is_file() else "none"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DiskError(
            f"{tmp}: saving the step {trainer.step} checkpoint failed ({first}; {free_space(trainer.ckpt_dir)}); "
            f"the partial folder was removed, the last complete checkpoint ({kept}) is kept"
        ) from None
    barrier()
    return final


def _save(trainer: Trainer, name: str, tmp: Path, final: Path) -> None:
    if trainer.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    trainer.gen_engine.save_checkpoint(str(tmp), tag="generator", save_latest=False)
    if trainer.disc_engine is not None:
        trainer.disc_engine.save_checkpoint(str(tmp), tag="discriminator", save_latest=False)
    quantizer = trainer.gen_engine.module.core.quantizer
    torch.save(
        {
            "step": trainer.step,
            "epoch": trainer.epoch,
            "rng": rng_state(),
            "data": trainer.loader.state_dict(),
            "usage_updates": [cb.usage_updates for cb in quantizer.codebooks],
            "nonfinite_steps": trainer.nonfinite_steps,
        },
        tmp / f"rank{trainer.rank:05d}_state.pt",
    )
    barrier()
    if trainer.rank == 0:
        state = {
            "step": trainer.step,
            "stage": trainer.cfg.stage,
            "world_size": trainer.world,
            "model_config": trainer.model_config.to_dict(),
            "config": trainer.cfg.to_dict(),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(trainer.ckpt_dir / "latest", name)
        keep = trainer.cfg.run.keep_last
        olds = sorted(p for p in trainer.ckpt_dir.glob("step-*") if p.is_dir())
        for old in olds[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(trainer: Trainer, path: str) -> None:
    """Resume ``trainer`` from ``path`` (a step-N directory, a checkpoints directory, or "auto": the latest one in
    the run's own, if any); the world size must be the one that wrote it."""
    ckpt = Path(path)
    if path == "auto":
        latest = trainer.ckpt_dir / "latest"
        if not latest.exists():
            return  # nothing to resume: fresh start
        ckpt = trainer.ckpt_dir / latest.read_text().strip()
    elif (ckpt / "latest").is_file() and not (ckpt / STATE_FILE).exists():
        ckpt = ckpt / (ckpt / "latest").read_text().strip()
    if not (ckpt / STATE_FILE).exists():
        raise FileNotFoundError(f"run.resume: {ckpt} is not a training checkpoint (no {STATE_FILE})")
    saved = json.loads((ckpt / STATE_FILE).read_text())
    if saved["world_size"] != trainer.world:
        raise ValueError(f"run.resume: {ckpt} was written by {saved['world_size']} ranks, this run has {trainer.world}")
    # Every torch file is read with weights_only=True + an allow-list before any is loaded (a payload is refused,
    # naming the file); DeepSpeed's own loads go through the same safe_load.
    check_checkpoint(ckpt)
    with deepspeed_safe_loading(trainer.gen_engine):
        trainer.gen_engine.load_checkpoint(str(ckpt), tag="generator")
    if trainer.disc_engine is not None:
        with deepspeed_safe_loading(trainer.disc_engine):
            trainer.disc_engine.load_checkpoint(str(ckpt), tag="discriminator")
    state = safe_load(ckpt / f"rank{trainer.rank:05d}_state.pt")
    trainer.step, trainer.epoch = int(state["step"]), int(state["epoch"])
    trainer.nonfinite_steps = int(state.get("nonfinite_steps", 0))
    if trainer.rank == 0:  # steps logged after this checkpoint (before a crash) are logged again by this run
        truncate_after(trainer.out / LOG_NAME, trainer.step)
    trainer.loader.load_state_dict(state["data"])
    trainer._iter = None
    for cb, n in zip(trainer.gen_engine.module.core.quantizer.codebooks, state["usage_updates"]):
        cb.usage_updates = n
    set_rng_state(state["rng"])
