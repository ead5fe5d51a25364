"""Helpers shared by the training tests (plain module: the test directory is on sys.path under pytest)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2]
TRAIN = PKG / "train.py"
CONFIGS = PKG / "configs"


def venv_tool(name: str) -> str:
    """A console script of this interpreter's environment (also when its bin/ is not on PATH)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def overrides(assets, out, *extra, stage=1):
    """Stage 1: the stand-in ViT teacher. Stage 2: BiomedCLIP's text-tower layout (format hf_bert: a tiny BERT folder
    + open_clip checkpoint), loaded through the same path as the real PubMedBERT."""
    if stage == 1:
        teacher = [f"teacher.path={assets['vision_teacher']}"]
    else:
        teacher = [
            "teacher.format=hf_bert",
            f"teacher.path={assets['hf_bert']}",
            f"teacher.checkpoint={assets['hf_bert_checkpoint']}",
            "teacher.context_length=32",
        ]
    return [
        f"data.source={assets['shards']}",
        "data.image_size=64",
        "data.batch_size=4",
        f"lpips.path={assets['lpips']}",
        *teacher,
        f"disc.path={assets['disc_backbone']}",
        f"run.output_dir={out}",
        "run.log_every=1",
        "run.progress=false",
        "run.tensorboard=false",
        *extra,
    ]


def run_train(config, args, launcher=None, timeout=300, env_extra=None):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", **(env_extra or {})}
    cmd = (launcher or [sys.executable]) + [str(TRAIN), "--config", str(CONFIGS / config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------------- vision teachers (timm / transformers)


def teacher_input(x, size, mean, std):
    """What a vision teacher must be fed, written out: nearest resize of the [-1, 1] image, then (x01 - mean) / std."""
    import torch
    import torch.nn.functional as F

    x = F.interpolate(x, size=(size, size), mode="nearest")
    return ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def random_images(seed=3, size=48):
    import torch

    return torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _adapters(out, step):
    import torch

    ckpt = out / "checkpoints" / f"step-{step:08d}" / "generator" / "mp_rank_00_model_states.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["module"]
    return {k: v for k, v in state.items() if k.startswith("text_")}


def check_teacher_run(result, out, teacher_dim):
    """A 3-step stage-1 run with a vision teacher: finite losses, adapters sized by the teacher and trained."""
    import json
    import math

    import torch

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["clip"]) and r["clip"] > 0
    first, last = _adapters(out, 1), _adapters(out, 3)
    assert first["text_projection.weight"].shape[1] == teacher_dim  # sized by the teacher's output width
    for key in ("text_fc_norm.weight", "text_fc_norm.bias", "text_projection.weight", "text_projection.bias"):
        assert not torch.equal(first[key], last[key]), key  # the adapters train on the teacher's features
