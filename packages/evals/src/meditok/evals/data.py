"""Loading evaluation images and labels: manifests (via meditok-data) and MedMNIST-style NPZ files.

Everything is validated up front (`load_manifest`, `load_npz`): a missing manifest, a malformed row, a missing image
file or a missing label raises `EvalError` before any model runs.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from meditok.evals.errors import EvalError


@dataclass
class EvalSet:
    """Images (float [N,3,S,S] in [-1,1]) with groups (modality), labels and keys, all aligned."""

    name: str
    images: torch.Tensor
    groups: list[str]
    keys: list[str]
    labels: list[str] | None = None
    splits: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def _row_value(row, key: str):
    if key in ("modality", "dataset_name", "caption", "split"):
        return getattr(row, key)
    return row.extra.get(key)


def load_manifest(path: str | Path, *, label_key: str | None = None, limit_per_group: int | None = None, seed: int = 0):
    """Read and validate a manifest (.jsonl or the reference's .csv). Returns the rows (meditok-data ManifestRow).

    ``limit_per_group`` keeps at most that many rows per modality (spread evenly, deterministic)."""
    from meditok.data import MedicalImageError, read_manifest

    path = Path(path)
    if not path.exists():
        raise EvalError(f"manifest not found: {path}")
    try:
        rows = read_manifest(path)
    except MedicalImageError as exc:
        raise EvalError(f"malformed manifest {path}: {exc}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise EvalError(f"cannot read manifest {path}: {exc}") from None
    if not rows:
        raise EvalError(f"manifest {path} has no rows")
    missing = [r.path for r in rows if not Path(r.path).exists()]
    if missing:
        raise EvalError(f"manifest {path}: {len(missing)} image file(s) missing, e.g. {missing[:3]}")
    if label_key:
        unlabelled = [i + 1 for i, r in enumerate(rows) if _row_value(r, label_key) in (None, "")]
        if unlabelled:
            raise EvalError(f"manifest {path}: rows {unlabelled[:5]} have no label {label_key!r}")
    if limit_per_group:
        by_group: dict[str, list] = defaultdict(list)
        for r in rows:
            by_group[r.modality].append(r)
        kept = []
        for group in sorted(by_group):
            items = by_group[group]
            if len(items) > limit_per_group:
                idx = np.linspace(0, len(items) - 1, limit_per_group).round().astype(int)
                items = [items[i] for i in sorted(set(idx.tolist()))]
            kept.extend(items)
        rows = kept
    return rows


def images_from_rows(
    rows,
    *,
    size: int = 256,
    resize: str = "crop",
    name: str = "data",
    label_key: str | None = None,
    progress: bool = True,
) -> EvalSet:
    """Decode and preprocess manifest rows (meditok-data `Preprocess`, eval mode) into an `EvalSet`."""
    from meditok.data import MedicalImageError, Preprocess, load_row

    preprocess = Preprocess(size=size, resize=resize)
    images, groups, keys, labels, splits = [], [], [], [], []
    for row in tqdm(rows, desc=f"load {name}", unit="img", disable=not progress):
        try:
            images.append(preprocess(load_row(row)))
        except MedicalImageError as exc:
            raise EvalError(f"cannot read {row.key}: {exc}") from None
        groups.append(row.modality)
        keys.append(row.key)
        labels.append(str(_row_value(row, label_key)) if label_key else row.modality)
        splits.append(row.split or "")
    return EvalSet(name, torch.stack(images), groups, keys, labels, splits)


def load_eval_set(
    path: str | Path,
    *,
    size: int = 256,
    resize: str = "crop",
    label_key: str | None = None,
    limit_per_group: int | None = None,
    progress: bool = True,
) -> EvalSet:
    rows = load_manifest(path, label_key=label_key, limit_per_group=limit_per_group)
    return images_from_rows(
        rows, size=size, resize=resize, name=Path(path).stem, label_key=label_key, progress=progress
    )


def check_npz(path: str | Path) -> dict:
    """Validate a MedMNIST-style NPZ (``{train,val,test}_images`` + ``_labels``); returns {split: count}."""
    path = Path(path)
    if not path.exists():
        raise EvalError(f"NPZ file not found: {path}")
    try:
        data = np.load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise EvalError(f"cannot read NPZ {path}: {exc}") from None
    counts = {}
    for split in ("train", "val", "test"):
        if f"{split}_images" in data.files:
            if f"{split}_labels" not in data.files:
                raise EvalError(f"NPZ {path}: has {split}_images but no {split}_labels")
            n_img, labels = len(data[f"{split}_images"]), data[f"{split}_labels"]
            if len(labels) != n_img:
                raise EvalError(f"NPZ {path}: {n_img} {split} images but {len(labels)} labels")
            if labels.ndim == 2 and labels.shape[1] > 1:
                raise EvalError(f"NPZ {path}: multi-label targets {labels.shape} are not supported by the probe")
            counts[split] = n_img
    if "train" not in counts or not ({"val", "test"} & set(counts)):
        raise EvalError(f"NPZ {path}: needs train_images/train_labels and test_* (or val_*), has {data.files}")
    return counts


def load_npz(
    path: str | Path, *, size: int = 64, max_per_split: int | None = None, seed: int = 0, progress: bool = True
) -> EvalSet:
    """MedMNIST NPZ -> EvalSet with splits 'train' and 'test' (``val`` is used as test when there is no test)."""
    from meditok.tokenizer.preprocessing import preprocess

    path = Path(path)
    counts = check_npz(path)
    data = np.load(path)
    test_split = "test" if "test" in counts else "val"
    images, labels, splits, keys = [], [], [], []
    rng = random.Random(seed)
    for split in ("train", test_split):
        arr, lab = data[f"{split}_images"], data[f"{split}_labels"].reshape(len(data[f"{split}_images"]), -1)[:, 0]
        order = list(range(len(arr)))
        if max_per_split and len(order) > max_per_split:
            order = sorted(rng.sample(order, max_per_split))
        for i in tqdm(order, desc=f"load {path.stem}:{split}", unit="img", disable=not progress):
            images.append(preprocess(arr[i], size=size, resize="squash")[0])
            labels.append(str(int(lab[i])))
            splits.append("train" if split == "train" else "test")
            keys.append(f"{path.name}#{split}={i}")
    modality = path.stem.replace("mnist", "")
    return EvalSet(path.stem, torch.stack(images), [modality] * len(keys), keys, labels, splits)


def read_json_or_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise EvalError(f"file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                data = data.get("data") or data.get("questions") or list(data.values())
            if not isinstance(data, list):
                raise EvalError(f"{path}: expected a JSON list of objects")
            return data
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}: malformed JSON ({exc})") from None
