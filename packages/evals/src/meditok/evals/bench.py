"""`meditok-eval bench`: tokenizer speed and memory, wrapping the tokenizer package's benchmark code
(``meditok.tokenizer.benchmark``: ``time_batches`` and ``measure_rss``, the same functions as the repository's
``benchmarks/tokenizer_speed.py``), run on the user's weights (any config: tiny, small, meditok-l)."""

from __future__ import annotations

from pathlib import Path

from meditok.evals import plots
from meditok.evals.report import Report


def run_bench(
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
    from meditok.tokenizer import benchmark as bench

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
        "timing_code": bench.__name__,
    }


def write_bench_report(report: Report, r: dict) -> None:
    report.text(
        f"Tokenizer `{r['config']}` ({r['parameters']:,} parameters), {r['dtype']} on {r['device']}, "
        f"{r['size']}x{r['size']}, median of {r['repeats']} runs after a warm-up ({r['machine']}); timing "
        f"code: `{r['timing_code']}`."
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
