"""PNG figures (matplotlib, Agg backend): grids, grouped bar charts, confusion matrices, codebook histograms."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _to_hwc(x: torch.Tensor) -> np.ndarray:
    from meditok.tokenizer.preprocessing import to_uint8

    return to_uint8(x)


def image_grid(
    rows: dict[str, torch.Tensor], path: Path, col_titles: list[str] | None = None, max_cols: int = 8
) -> Path:
    """One row per entry of ``rows`` (name -> [N,3,H,W] in [-1,1]), up to ``max_cols`` images each."""
    names = list(rows)
    n_cols = min(max_cols, max(len(v) for v in rows.values()))
    fig, axes = plt.subplots(len(names), n_cols, figsize=(1.6 * n_cols, 1.7 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(rows[name]):
                ax.imshow(_to_hwc(rows[name][c]))
            if c == 0:
                ax.set_title(name, fontsize=7, loc="left")
            elif r == 0 and col_titles and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=6)
        if r == 0 and col_titles:
            axes[0][0].set_title(f"{name}\n{col_titles[0]}", fontsize=6, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grouped_bars(values: dict[str, dict[str, float]], path: Path, ylabel: str, title: str = "") -> Path:
    """values: series (e.g. tokenizer) -> group (e.g. modality) -> number."""
    series = list(values)
    groups = sorted({g for v in values.values() for g in v})
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(groups) + 2), 3.4))
    for i, s in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, [values[s].get(g, np.nan) for g in groups], width, label=s)
    ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_plot(matrix: np.ndarray, labels: list[str], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def codebook_histograms(counts: torch.Tensor, path: Path, title: str = "") -> Path:
    """One panel per sub-codebook: code frequencies sorted in decreasing order (log scale)."""
    k = counts.shape[0]
    cols = 4
    fig, axes = plt.subplots((k + cols - 1) // cols, cols, figsize=(11, 2.3 * ((k + cols - 1) // cols)), squeeze=False)
    for i in range(k):
        ax = axes[i // cols][i % cols]
        c = counts[i].double().sort(descending=True).values.numpy()
        used = int((c > 0).sum())
        # One filled step outline instead of 4096 bar patches (the same picture: unit-wide bars centred on each rank);
        # bar() made this figure ~35 s of CPU for 8 codebooks, whatever the number of images.
        ax.stairs(np.maximum(c, 0), np.arange(len(c) + 1) - 0.5, fill=True, baseline=0)
        ax.set_yscale("symlog")
        ax.set_title(f"codebook {i}: {used}/{len(c)} used", fontsize=8)
        ax.tick_params(labelsize=6)
    for j in range(k, axes.size):
        axes.flat[j].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
