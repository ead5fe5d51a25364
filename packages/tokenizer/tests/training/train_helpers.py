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
