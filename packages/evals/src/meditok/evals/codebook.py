"""`meditok-eval codebook`: usage, perplexity and dead codes per sub-codebook over a data set (and per modality)."""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from meditok.evals import plots
from meditok.evals.data import EvalSet
from meditok.evals.metrics import code_histogram, codebook_stats
from meditok.evals.report import Report


def encode_all(tok, images: torch.Tensor, batch_size: int, progress: bool = True) -> torch.Tensor:
    codes = []
    for i in tqdm(range(0, len(images), batch_size), desc="encode", unit="batch", disable=not progress):
        codes.append(tok.encode(images[i : i + batch_size]).cpu())
    return torch.cat(codes)


def evaluate_codebook(tok, data: EvalSet, batch_size: int = 8, progress: bool = True) -> tuple[dict, torch.Tensor]:
    codes = encode_all(tok, data.images, batch_size, progress)
    size = tok.config.codebook_size
    counts = code_histogram(codes, size)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(data.groups):
        by_group[g].append(i)
    per_group = {g: codebook_stats(code_histogram(codes[idx], size)) for g, idx in sorted(by_group.items())}
    stats = codebook_stats(counts)
    result = {
        "num_images": len(data),
        "tokens_per_codebook": int(codes.shape[0] * codes.shape[2]),
        "codebook_size": size,
        "per_codebook": stats,
        "mean": {k: sum(s[k] for s in stats) / len(stats) for k in ("usage_pct", "perplexity", "dead_codes")},
        "per_modality": {
            g: {k: sum(s[k] for s in st) / len(st) for k in ("usage_pct", "perplexity", "dead_codes")}
            for g, st in per_group.items()
        },
        "running_usage_pct": tok.quantizer.usage_per_codebook(),
    }
    return result, counts


def write_codebook_report(report: Report, data: EvalSet, result: dict, counts: torch.Tensor, name: str) -> None:
    n_tokens = result["tokens_per_codebook"]
    report.text(
        f"`{name}` on {len(data)} images of `{data.name}` ({n_tokens} tokens per sub-codebook of "
        f"{result['codebook_size']} codes). Usage = share of codes selected at least once; perplexity = "
        "exp(entropy of the code frequencies) (at most min(tokens, codebook size)); dead = never selected. "
        "'running usage' is the quantizer's training-time statistic stored with the weights."
    )
    report.table(
        ["sub-codebook", "usage %", "perplexity", "dead codes", "running usage %"],
        [
            [i, s["usage_pct"], s["perplexity"], s["dead_codes"], result["running_usage_pct"][i]]
            for i, s in enumerate(result["per_codebook"])
        ],
        digits=2,
    )
    m = result["mean"]
    report.text(
        f"Mean over sub-codebooks: usage {m['usage_pct']:.2f} %, perplexity {m['perplexity']:.1f}, "
        f"dead codes {m['dead_codes']:.0f}."
    )
    report.text("## Per modality")
    report.table(
        ["modality", "n", "usage %", "perplexity", "dead codes"],
        [
            [g, data.groups.count(g), s["usage_pct"], s["perplexity"], s["dead_codes"]]
            for g, s in result["per_modality"].items()
        ],
        digits=2,
    )
    plots.codebook_histograms(counts, report.figure("codebook_usage.png", "code frequencies per sub-codebook"), name)
    plots.grouped_bars(
        {"usage %": {g: s["usage_pct"] for g, s in result["per_modality"].items()}},
        report.figure("usage_per_modality.png", "mean usage per modality"),
        "usage %",
    )
    report.metrics.update({"tokenizer": name, "dataset": data.name, **result})
