"""`meditok-eval bench`: tokenizer speed and memory, wrapping the tokenizer's benchmark script
(``benchmarks/tokenizer_speed.py`` of the MedITok checkout: its ``time_batches`` and ``measure_rss``), run on the
user's weights (any config: tiny, small, meditok-l)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from meditok.evals import plots
from meditok.evals.errors import EvalError
from meditok.evals.report import Report

SCRIPT = Path("benchmarks") / "tokenizer_speed.py"


def find_script(path: str | None) -> Path:
    if path:
        p = Path(path)
        if not p.exists():
            raise EvalError(f"benchmark script not found: {p}")
        return p
    candidates = [Path(os.environ["MEDITOK_ROOT"]) / SCRIPT] if os.environ.get("MEDITOK_ROOT") else []
    for base in [Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]:
        candidates.append(base / SCRIPT)
    for c in candidates:
        if c.exists():
            return c
    raise EvalError(
        f"cannot find {SCRIPT} (the tokenizer's benchmark): run from the MedITok checkout, set "
        "MEDITOK_ROOT, or pass --script PATH"
    )


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location("meditok_tokenizer_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("time_batches", "measure_rss", "machine"):
        if not hasattr(module, name):
            raise EvalError(f"{path} has no {name}(); is it MedITok's benchmarks/tokenizer_speed.py?")
    return module


def run_bench(
    script: Path,
    weights: str,
    *,
    device: str,
    dtype: str,
    batch_sizes: list[int],
    size: int,
    repeats: int,
    memory: bool = True,
) -> dict:
    import torch

    from meditok.evals.adapters import load_meditok

    bench = load_script(script)
    tok = load_meditok(weights, device)
    if dtype != "float32":
        tok = tok.to_inference(device, getattr(torch, dtype))
    rows = bench.time_batches(tok, batch_sizes, size, repeats, device)
    mem = bench.measure_rss(Path(weights), device, dtype, size) if memory else None
    return {
        "rows": rows,
        "memory": mem,
        "machine": bench.machine(),
        "parameters": tok.num_parameters(),
        "config": tok.config.name,
        "device": device,
        "dtype": dtype,
        "size": size,
        "repeats": repeats,
        "script": str(script),
    }


def write_bench_report(report: Report, r: dict) -> None:
    report.text(
        f"Tokenizer `{r['config']}` ({r['parameters']:,} parameters), {r['dtype']} on {r['device']}, "
        f"{r['size']}x{r['size']}, median of {r['repeats']} runs after a warm-up ({r['machine']}); timing "
        f"code: `{r['script']}`."
    )
    report.table(
        ["batch", "encode s", "decode s", "encode img/s", "decode img/s"],
        [[x["batch"], x["encode_s"], x["decode_s"], x["encode_img_s"], x["decode_img_s"]] for x in r["rows"]],
        digits=3,
    )
    if r["memory"]:
        gpu = r["memory"].get("peak_gpu_gib")
        report.text(
            f"Peak RSS of a fresh process loading the weights and encoding+decoding a batch of 2: "
            f"{r['memory']['peak_rss_gib']:.2f} GiB" + (f"; peak GPU {gpu:.2f} GiB" if gpu else "") + "."
        )
    plots.grouped_bars(
        {
            "encode": {str(x["batch"]): x["encode_img_s"] for x in r["rows"]},
            "decode": {str(x["batch"]): x["decode_img_s"] for x in r["rows"]},
        },
        report.figure("throughput.png", "images/s per batch size"),
        "images/s",
        "batch size",
    )
    report.metrics.update(r)
