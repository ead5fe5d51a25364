"""Helpers shared by the training tests (plain module: the test directory is on sys.path under pytest)."""

import os
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2]
TRAIN = PKG / "train.py"
CONFIGS = PKG / "configs"


def overrides(assets, out, *extra, stage=1):
    teacher = assets["vision_teacher"] if stage == 1 else assets["text_tower"]
    return [
        f"data.source={assets['shards']}",
        "data.image_size=64",
        "data.batch_size=4",
        f"lpips.path={assets['lpips']}",
        f"teacher.path={teacher}",
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
