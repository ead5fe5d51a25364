"""PNG figures beside a run's log.jsonl, drawn with Pillow only (no matplotlib in the training extra).

* `loss.png`: total loss and reconstruction loss (0.2·L1 + L2) against the step.
* `reconstructions.png`: a batch of training images (top row) over their reconstructions (bottom row).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from meditok.tokenizer.preprocessing import psnr as psnr_of
from meditok.tokenizer.preprocessing import to_uint8

COLOURS = {"loss": (31, 119, 180), "rec": (214, 39, 40), "lpips": (44, 160, 44), "clip": (148, 103, 189)}


def save_loss_curve(
    records: Sequence[dict], path: str | os.PathLike, keys: Sequence[str] = ("loss", "rec"), size=(640, 360)
) -> Path:
    """Line plot of `keys` from log records (dicts with "step"); log-scaled y when the values span > 20×."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    series = {k: [(r["step"], float(r[k])) for r in records if k in r and math.isfinite(float(r[k]))] for k in keys}
    series = {k: v for k, v in series.items() if v}
    values = [y for v in series.values() for _, y in v]
    steps = [s for v in series.values() for s, _ in v]
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if values:
        log_y = min(values) > 0 and max(values) / min(values) > 20
        fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
        lo, hi = fy(min(values)), fy(max(values))
        hi = hi if hi > lo else lo + 1e-6
        s0, s1 = min(steps), max(steps)
        s1 = s1 if s1 > s0 else s0 + 1

        def xy(step, y):
            return (
                left + (step - s0) / (s1 - s0) * (width - left - right),
                height - bottom - (fy(y) - lo) / (hi - lo) * (height - top - bottom),
            )

        for i, (key, points) in enumerate(series.items()):
            colour = COLOURS.get(key, (0, 0, 0))
            if len(points) > 1:
                draw.line([xy(s, y) for s, y in points], fill=colour, width=2)
            draw.text((left + 10 + 90 * i, 8), f"{key} {points[-1][1]:.4g}", fill=colour)
        draw.text((4, top - 4), f"{max(values):.3g}", fill="black")
        draw.text((4, height - bottom - 8), f"{min(values):.3g}", fill="black")
        draw.text((left, height - bottom + 6), str(s0), fill="black")
        draw.text((width - right - 40, height - bottom + 6), str(s1), fill="black")
        draw.text((width // 2 - 20, height - bottom + 18), "step" + (" (log y)" if log_y else ""), fill="black")
    path = Path(path)
    image.save(path)
    return path


def save_reconstruction_grid(
    images: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike, max_images: int = 8
) -> Path:
    """Originals on the top row, reconstructions below, 2 px white gaps."""
    from PIL import Image

    a = to_uint8(images[:max_images])
    b = to_uint8(reconstructions[:max_images])
    n, h, w, _ = a.shape
    gap = 2
    grid = np.full((2 * h + gap, n * w + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        x0 = i * (w + gap)
        grid[:h, x0 : x0 + w] = a[i]
        grid[h + gap :, x0 : x0 + w] = b[i]
    path = Path(path)
    Image.fromarray(grid).save(path)
    return path


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of a batch: the tokenizer's one `psnr` on the clipped reconstructions."""
    return psnr_of(images, reconstructions.float().clamp(-1, 1))
