"""`meditok-eval gen`: FID, precision and recall of generated against real images, per group (modality or prompt
label) and overall, all in FID-Inception feature space.

Generated images come from a folder ``DIR/<group>/*.png|jpg`` (the layout LlamaGen-style samplers write), a
manifest whose rows carry the group, a Python callable ``module:fn`` (``fn(group, n, seed) -> [n,3,H,W] in
[-1,1]``), or the AR model through ``meditok.ar`` (``--model-path``, imported lazily; ``generate_image(group, n)``).
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from meditok.evals import plots
from meditok.evals.errors import EvalError
from meditok.evals.metrics import fid_from_features, precision_recall
from meditok.evals.report import Report

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def scan_folder(folder: str | Path) -> dict[str, list[Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"generated-image folder not found: {folder}")
    groups = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(folder.iterdir())
        if d.is_dir()
    }
    groups = {g: ps for g, ps in groups.items() if ps}
    if not groups:
        raise EvalError(f"{folder}: expected images in per-group sub-folders DIR/<group>/*.png")
    return groups


def load_folder_images(groups: dict[str, list[Path]], image_input, progress: bool = True) -> dict[str, torch.Tensor]:
    """Generated image files, read as any file is (`meditok.tokenizer.image_files.load_image`) and prepared with the
    same `ImageInput` as the real images they are compared with."""
    from meditok.tokenizer.image_files import ImageFileError, load_image
    from meditok.tokenizer.preprocessing import preprocess

    out = {}
    for g, paths in groups.items():
        tensors = []
        for p in tqdm(paths, desc=f"load generated {g}", disable=not progress):
            try:
                tensors.append(preprocess(load_image(p, image_input), image_input))
            except (ImageFileError, ValueError) as exc:
                raise EvalError(f"generated image {p}: {exc}") from None
        out[g] = torch.cat(tensors)
    return out


def load_generator(spec: str):
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise EvalError(f"cannot import generator {spec!r}: {exc}") from None


def ar_generator(model, image_input):
    """`fn(group, n, seed)` over a meditok.ar model: the group name (modality / prompt) is the text prompt; the images
    are generated at the evaluation's output size and prepared with the same `ImageInput` as the real ones."""
    from meditok.tokenizer.preprocessing import preprocess

    size = image_input.output_size or (image_input.size, image_input.size)

    def fn(group: str, n: int, seed: int) -> torch.Tensor:
        images = model.generate_image(group, size=size, num_images=n, seed=seed)
        images = images if isinstance(images, list) else [images]
        return torch.cat([preprocess(image, image_input) for image in images])

    return fn


def generate(fn, groups: list[str], n: int, seed: int, progress: bool = True) -> dict[str, torch.Tensor]:
    out = {}
    for g in tqdm(groups, desc="generate", disable=not progress):
        x = torch.as_tensor(fn(g, n, seed)).float()
        if x.ndim != 4 or x.shape[1] != 3:
            raise EvalError(f"generator returned shape {tuple(x.shape)} for {g!r}; expected [n,3,H,W] in [-1,1]")
        out[g] = x.clamp(-1, 1)
    return out


def evaluate_gen(
    real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor], inception, k: int = 3, progress: bool = True
) -> dict:
    common = sorted(set(real) & set(fake))
    if not common:
        raise EvalError(f"no group is both real and generated: real {sorted(real)}, generated {sorted(fake)}")
    feats_r, feats_f = {}, {}
    for g in tqdm(common, desc="inception", disable=not progress):
        feats_r[g], feats_f[g] = inception(real[g]), inception(fake[g])
    per_group = {}
    for g in common:
        row = {"n_real": len(feats_r[g]), "n_generated": len(feats_f[g])}
        if min(len(feats_r[g]), len(feats_f[g])) >= 2:
            row["fid"] = fid_from_features(feats_r[g], feats_f[g])
            row["precision"], row["recall"] = precision_recall(feats_r[g], feats_f[g], k)
        else:
            row["fid"] = row["precision"] = row["recall"] = None
        per_group[g] = row
    all_r, all_f = np.concatenate([feats_r[g] for g in common]), np.concatenate([feats_f[g] for g in common])
    overall = {"n_real": len(all_r), "n_generated": len(all_f), "fid": fid_from_features(all_r, all_f)}
    overall["precision"], overall["recall"] = precision_recall(all_r, all_f, k)
    return {"overall": overall, "per_group": per_group, "k": k, "skipped_groups": sorted(set(real) ^ set(fake))}


def write_gen_report(report: Report, result: dict, real: dict, fake: dict, source: str, notes: list[str]) -> None:
    report.text(
        f"Generated images from {source}. FID between the real and generated sets in FID-Inception space; "
        f"precision/recall: Kynkäänniemi et al. k-NN manifolds (k={result['k']}). FID on tens of images is "
        "biased upwards: compare models on equal sample counts.",
        *notes,
    )
    rows = [
        [g, r["n_real"], r["n_generated"], r["fid"], r["precision"], r["recall"]]
        for g, r in [*result["per_group"].items(), ("overall", result["overall"])]
    ]
    report.table(["group", "real", "generated", "FID", "precision", "recall"], rows)
    if result["skipped_groups"]:
        report.text(f"Groups present on one side only (skipped): {result['skipped_groups']}.")
    plots.grouped_bars(
        {m: {g: r[m] for g, r in result["per_group"].items() if r[m] is not None} for m in ("precision", "recall")},
        report.figure("precision_recall_per_group.png", "precision and recall per group"),
        "share",
    )
    plots.grouped_bars(
        {"FID": {g: r["fid"] for g, r in result["per_group"].items() if r["fid"] is not None}},
        report.figure("fid_per_group.png", "FID per group"),
        "FID",
    )
    for i, g in enumerate(result["per_group"]):
        plots.image_grid(
            {f"{g}: generated": fake[g][:8], f"{g}: real": real[g][:8]},
            report.figure(f"samples_{i}.png", f"samples: {g}"),
        )
    report.metrics.update(result)


def group_real(images: torch.Tensor, groups: list[str]) -> dict[str, torch.Tensor]:
    idx: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        idx[g].append(i)
    return {g: images[ix] for g, ix in idx.items()}
