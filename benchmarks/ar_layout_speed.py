"""meditok-ar image generation, compact layout (one backbone step per image position) vs flat (8 per position).

    OMP_NUM_THREADS=1 python benchmarks/ar_layout_speed.py                   # SmolLM2 at /work/smollm2, 256x256
    OMP_NUM_THREADS=1 python benchmarks/ar_layout_speed.py --size 128 --no-write

The base is a SmolLM2 Hugging Face folder (``--base``; ``meditok-ar import-gguf`` makes one), extended on the fly with
each layout and a tiny MedITok (``MedITok.from_config("tiny", seed=0)``): the image rows, input adapter and depth head
are freshly initialised, which is all speed needs (sampling cost does not depend on what the weights say). Each layout
runs in its own fresh process (so that peak RSS is its own): conditional sampling at temperature 1 of ``--size``
images at batch 1 and 8, token / code generation only (no pixel decoding), median of ``--repeats`` runs. Backbone
steps are counted (forward calls of the LLM per image at batch 1, the prompt's prefill included), not computed.
Prompt tokens per image: the image block's length and a one-question understanding prompt with that image.
Results: a markdown table on stdout and, unless ``--no-write``, JSON in benchmarks/results/ar_layout_speed.json
(BENCHMARKS.md, "AR layouts: compact vs flat", quotes a run with its machine and date).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Chest radiograph, PA view."


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(layout: str, base: Path, size: int, batches: list[int], repeats: int) -> dict:
    """One layout, in this process: extend, then time generation."""
    import torch

    from meditok.ar.generation import generate_image_codes, generate_image_tokens
    from meditok.ar.model import MedITokAR
    from meditok.tokenizer import MedITok

    torch.manual_seed(0)
    start = time.perf_counter()
    model = MedITokAR.from_pretrained(base, tokenizer=MedITok.from_config("tiny", seed=0).eval(), layout=layout)
    build_s = time.perf_counter() - start
    generate = generate_image_codes if model.layout.compact else generate_image_tokens
    grid = (size // 16, size // 16)
    calls = {"backbone": 0, "head": 0}
    model.llm.register_forward_pre_hook(lambda *_: calls.__setitem__("backbone", calls["backbone"] + 1))
    if model.compact_modules is not None:
        head = model.compact_modules.head
        head.layers[0].register_forward_pre_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
    generate(model, [PROMPT], (1, 1), seed=0)  # warm-up
    calls.update(backbone=0, head=0)
    generate(model, [PROMPT], grid, seed=0)
    steps = dict(calls)
    rows = []
    for batch in batches:
        runs = []
        for i in range(repeats):
            t0 = time.perf_counter()
            generate(model, [PROMPT] * batch, grid, seed=i)
            runs.append(time.perf_counter() - t0)
        seconds = statistics.median(runs)
        rows.append({"batch": batch, "seconds": seconds, "images_per_s": batch / seconds,
                     "seconds_per_image": seconds / batch})  # fmt: skip
    codes = torch.zeros(8, grid[0] * grid[1], dtype=torch.long)
    block = model.builder.image(codes, grid)
    question = model.builder.question_prompt(codes, "Is there a pneumothorax?", grid)
    return {
        "layout": model.layout.name,
        "version": model.layout.version,
        "vocab_size": model.layout.vocab_size,
        "parameters": sum(p.numel() for p in model.llm.parameters())
        + (sum(p.numel() for p in model.compact_modules.parameters()) if model.compact_modules is not None else 0),
        "build_seconds": build_s,
        "backbone_steps_per_image": steps["backbone"],
        "head_steps_per_image": steps["head"],
        "image_block_tokens": len(block),
        "question_prompt_tokens": len(question),
        "generation": rows,
        "peak_rss_mib": _vm_kib("VmHWM") / 1024,
    }


def table(results: list[dict], size: int) -> str:
    lines = [
        "| layout | backbone steps / image | head sub-steps / image | batch | s | s / image | images/s | image block tokens "
        "| question prompt tokens | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for g in r["generation"]:
            lines.append(
                f"| {r['layout']} (v{r['version']}) | {r['backbone_steps_per_image']} | {r['head_steps_per_image']} | "
                f"{g['batch']} | {g['seconds']:.1f} | {g['seconds_per_image']:.2f} | {g['images_per_s']:.3f} | "
                f"{r['image_block_tokens']} | {r['question_prompt_tokens']} | {r['peak_rss_mib']:.0f} |"
            )
    flat = {g["batch"]: g["images_per_s"] for r in results if r["layout"] == "flat" for g in r["generation"]}
    compact = {g["batch"]: g["images_per_s"] for r in results if r["layout"] == "compact" for g in r["generation"]}
    ratios = ", ".join(f"batch {b}: {compact[b] / flat[b]:.1f}x" for b in sorted(flat) if b in compact)
    return "\n".join(lines) + f"\n\nCompact / flat images/s at {size}x{size}: {ratios}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("/work/smollm2"), help="a SmolLM2 (Llama) HF folder")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--layouts", nargs="+", default=["compact", "flat"], choices=["compact", "flat"])
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--machine", default="", help="machine description for BENCHMARKS.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one layout, print its JSON
    args = parser.parse_args()
    if args.size % 16:
        parser.error("--size must be a multiple of 16")
    if args.one:
        print(json.dumps(measure(args.one, args.base, args.size, args.batch_sizes, args.repeats)))
        return
    results = []
    for layout in args.layouts:
        cmd = [sys.executable, __file__, "--one", layout, "--base", str(args.base), "--size", str(args.size),
               "--repeats", str(args.repeats), "--batch-sizes", *map(str, args.batch_sizes)]  # fmt: skip
        with tempfile.TemporaryFile("w+") as log:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
            if done.returncode:
                log.seek(0)
                raise SystemExit(f"{layout}: failed\n{log.read()[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{layout}: done", file=sys.stderr)
    import torch

    text = table(results, args.size)
    print(text)
    if args.no_write:
        return
    record = {"date": datetime.date.today().isoformat(), "size": args.size, "repeats": args.repeats,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "base": str(args.base),
              "machine": args.machine, "results": results}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "ar_layout_speed.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
