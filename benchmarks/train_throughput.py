"""Tiny-config stage-1 training throughput on this CPU, one process (steps/s and images/s), vs meditok-data's supply.

    python benchmarks/train_throughput.py --sizes 64 128 --steps 20 --repeats 3 --data-images-per-s 60

Runs `packages/tokenizer/train.py --config packages/tokenizer/configs/tiny-cpu-stage1.yaml` (all losses on: rec,
LPIPS stand-in, VQ, CLIP to the stand-in ViT teacher, GAN with the stand-in DINO backbone) on the real offline
samples (`meditok-data samples` → shards, small side 160), batch 4, fp32, ZeRO-0, as separate processes. Per run:
the median `step_time` of steps 3..N (train_step only: forward, backward, both optimiser steps) and the wall-clock
rate over steps 3..N from log timestamps (also data loading and logging). Reports medians over the repeats, and
the ratio of the data pipeline's images/s (BENCHMARKS.md "meditok-data") to what training consumes.
Prints one JSON line per image size. Needs the `train` extra and meditok-data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packages" / "tokenizer"


def prepare(root: Path) -> dict[str, str]:
    from meditok.data.samples import assemble_samples
    from meditok.tokenizer.training import make_standins

    assemble_samples(root / "samples")
    tool = Path(sys.executable).parent / "meditok-data"
    subprocess.run(
        [str(tool), "shard", str(root / "samples" / "manifest.jsonl"), "-o", str(root / "shards")]
        + ["--shard-size", "16", "--max-side", "160"],
        check=True,
        capture_output=True,
    )
    return {"shards": str(root / "shards"), **make_standins(root / "aux")}


def run_once(assets: dict[str, str], out: Path, size: int, steps: int, batch: int) -> dict[str, float]:
    args = [
        f"data.source={assets['shards']}",
        f"data.image_size={size}",
        f"data.batch_size={batch}",
        f"lpips.path={assets['lpips']}",
        f"teacher.path={assets['vision_teacher']}",
        f"disc.path={assets['disc_backbone']}",
        f"run.output_dir={out}",
        f"run.steps={steps}",
        f"run.ckpt_every={steps}",
        "run.log_every=1",
        "run.progress=false",
        "run.tensorboard=false",
        "run.plots=false",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, str(PKG / "train.py"), "--config", str(PKG / "configs" / "tiny-cpu-stage1.yaml"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    tail = records[2:]  # skip the first two steps (allocator / first-call warm-up)
    step_time = statistics.median(r["step_time"] for r in tail)
    # Cumulative steps/s at step k is k / elapsed_k, so elapsed_k = k / steps_per_s_k.
    elapsed = [r["step"] / r["steps_per_s"] for r in records]
    wall_rate = (records[-1]["step"] - records[1]["step"]) / (elapsed[-1] - elapsed[1])
    return {"step_time_s": step_time, "wall_steps_per_s": wall_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--data-images-per-s", type=float, default=60.0, help="BENCHMARKS.md, meditok-data")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assets = prepare(root)
        for size in args.sizes:
            runs = [
                run_once(assets, root / f"run-{size}-{i}", size, args.steps, args.batch) for i in range(args.repeats)
            ]
            step_time = statistics.median(r["step_time_s"] for r in runs)
            wall = statistics.median(r["wall_steps_per_s"] for r in runs)
            train_ips = wall * args.batch
            print(
                json.dumps(
                    {
                        "config": "tiny-cpu-stage1",
                        "image_size": size,
                        "batch": args.batch,
                        "processes": 1,
                        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
                        "steps": args.steps,
                        "repeats": args.repeats,
                        "median_step_time_s": round(step_time, 4),
                        "compute_steps_per_s": round(1 / step_time, 3),
                        "compute_images_per_s": round(args.batch / step_time, 2),
                        "wall_steps_per_s": round(wall, 3),
                        "wall_images_per_s": round(train_ips, 2),
                        "per_run_wall_steps_per_s": [round(r["wall_steps_per_s"], 3) for r in runs],
                        "data_images_per_s": args.data_images_per_s,
                        "data_over_training_ratio": round(args.data_images_per_s / train_ips, 2),
                        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                        "load_average": [round(x, 2) for x in os.getloadavg()],
                        "date": datetime.date.today().isoformat(),
                        "time": time.strftime("%H:%M"),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
