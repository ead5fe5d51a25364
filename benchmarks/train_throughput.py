"""Tokenizer training throughput on this CPU, one process (steps/s and images/s), vs meditok-data's supply.

    python benchmarks/train_throughput.py --config tiny --sizes 64 128 --steps 20 --repeats 3
    python benchmarks/train_throughput.py --config small --sizes 128 --steps 8 --warmup 2 --repeats 1
    python benchmarks/train_throughput.py --config tiny --sizes 64 --set disc.enabled=false      # GAN off
    python benchmarks/train_throughput.py --config packages/tokenizer/configs/stage1.yaml --sizes 64 --steps 4

`--config` is `tiny` (`packages/tokenizer/configs/tiny-cpu-stage1.yaml`), `small` (the same file with
`model.config=small`, the `small` tokenizer preset) or a config YAML path. Runs `packages/tokenizer/train.py` as
separate processes on the real offline samples (`meditok-data samples` → shards, small side 160), fp32, ZeRO-0, with
the config's losses on. Unless `--real-aux` is given, the pretrained parts are the random stand-ins of
`make_standins` (LPIPS VGG16/8, a 2-block 64-d ViT teacher at 64 px, a 4-block 64-d DINO-style backbone at 56 px):
the numbers measure the tokenizer's training step, not BiomedCLIP / VGG16 / DINOv2.

Per run: the median `step_time` (wall) and `step_cpu_time` (process CPU seconds) of the steps after `--warmup`
(train_step only: forward, backward, both optimiser steps), and the wall-clock rate over those steps from log
timestamps (also data loading and logging). Reports medians over the repeats and the ratio of the data pipeline's
images/s (BENCHMARKS.md "meditok-data") to what training consumes. Prints one JSON line per image size.
On a shared machine set OMP_NUM_THREADS=1: with 2 threads on 2 busy cores every op's OpenMP barrier waits for a
descheduled thread, which made steps 10-60x slower in our runs (see BENCHMARKS.md). Needs the `train` extra and
meditok-data.
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
PRESETS = {
    "tiny": (PKG / "configs" / "tiny-cpu-stage1.yaml", []),
    "small": (PKG / "configs" / "tiny-cpu-stage1.yaml", ["model.config=small"]),
}


def resolve_config(name: str) -> tuple[Path, list[str]]:
    """`tiny` / `small`, or a YAML path: (config file, overrides that select the preset)."""
    if name in PRESETS:
        path, extra = PRESETS[name]
        return path, list(extra)
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"--config: {name!r} is neither a preset ({' | '.join(PRESETS)}) nor a file")
    return path, []


def prepare(root: Path, standins: bool) -> dict[str, str]:
    from meditok.data.samples import assemble_samples

    assemble_samples(root / "samples")
    tool = Path(sys.executable).parent / "meditok-data"
    subprocess.run(
        [str(tool), "shard", str(root / "samples" / "manifest.jsonl"), "-o", str(root / "shards")]
        + ["--shard-size", "16", "--max-side", "160"],
        check=True,
        capture_output=True,
    )
    assets = {"shards": str(root / "shards")}
    if standins:
        from meditok.tokenizer.training.testing import make_standins

        assets.update(make_standins(root / "aux"))
    return assets


def aux_overrides(assets: dict[str, str], teacher_kind: str) -> list[str]:
    """The stand-ins, whatever formats and sizes the config names (only the paths of enabled parts matter)."""
    if "lpips" not in assets:
        return []
    teacher = {"vision": assets["vision_teacher"], "text": assets["text_tower"]}.get(teacher_kind)
    return [
        f"lpips.path={assets['lpips']}",
        "lpips.width_divisor=8",
        f"disc.path={assets['disc_backbone']}",
        "disc.format=meditok",
        *([f"teacher.path={teacher}", "teacher.format=meditok"] if teacher else []),
    ]


def run_once(config: Path, args: list[str], out: Path, warmup: int) -> dict[str, float]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, str(PKG / "train.py"), "--config", str(config), *args, f"run.output_dir={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    if len(records) < warmup + 2:
        raise SystemExit(f"need more than warmup + 1 = {warmup + 1} logged steps, got {len(records)}")
    tail = records[warmup:]  # skip the first steps (allocator / first-call warm-up)
    # Cumulative steps/s at step k is k / elapsed_k, so elapsed_k = k / steps_per_s_k.
    elapsed = [r["step"] / r["steps_per_s"] for r in records]
    first = warmup - 1 if warmup > 0 else 0
    wall_rate = (records[-1]["step"] - records[first]["step"]) / (elapsed[-1] - elapsed[first])
    return {
        "step_time_s": statistics.median(r["step_time"] for r in tail),
        "step_cpu_s": statistics.median(r.get("step_cpu_time", float("nan")) for r in tail),
        "wall_steps_per_s": wall_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="tiny", help="tiny | small | a config YAML path (default: tiny)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=20, help="logged steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="more section.key=value overrides")
    parser.add_argument("--real-aux", action="store_true", help="keep the config's LPIPS/teacher/disc paths")
    parser.add_argument("--data-images-per-s", type=float, default=60.0, help="BENCHMARKS.md, meditok-data")
    args = parser.parse_args()
    if args.steps < args.warmup + 2:
        parser.error("--steps must be at least --warmup + 2")
    config, preset = resolve_config(args.config)
    import torch

    from meditok.tokenizer.training import load_config

    teacher_kind = load_config(config, [*preset, *args.overrides]).teacher.kind

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assets = prepare(root, standins=not args.real_aux)
        for size in args.sizes:
            overrides = [
                *preset,
                f"data.source={assets['shards']}",
                f"data.image_size={size}",
                f"data.batch_size={args.batch}",
                "data.num_workers=0",
                *aux_overrides(assets, teacher_kind),
                "model.init_from=null",
                f"run.steps={args.steps}",
                f"run.ckpt_every={args.steps}",
                "run.log_every=1",
                "run.progress=false",
                "run.tensorboard=false",
                "run.plots=false",
                "run.zero_stage=0",
                "run.precision=fp32",
                *args.overrides,
            ]
            runs = [run_once(config, overrides, root / f"run-{size}-{i}", args.warmup) for i in range(args.repeats)]
            step_time = statistics.median(r["step_time_s"] for r in runs)
            wall = statistics.median(r["wall_steps_per_s"] for r in runs)
            train_ips = wall * args.batch
            print(
                json.dumps(
                    {
                        "config": args.config,
                        "config_file": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
                        "overrides": [*preset, *args.overrides],
                        "image_size": size,
                        "batch": args.batch,
                        "processes": 1,
                        "torch_threads": torch.get_num_threads(),
                        "steps": args.steps,
                        "warmup": args.warmup,
                        "repeats": args.repeats,
                        "median_step_time_s": round(step_time, 4),
                        "median_step_cpu_s": round(statistics.median(r["step_cpu_s"] for r in runs), 4),
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
