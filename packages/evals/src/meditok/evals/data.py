"""Loading evaluation images and labels: manifests (via meditok-data) and MedMNIST-style NPZ files.

Everything is validated up front (`load_manifest`, `load_npz`): a missing manifest, a malformed row, a missing image
file or a missing label raises `EvalError` before any model runs.

Multi-label data (one image, several findings) becomes an `EvalSet` with ``label_matrix`` [N, C] of 0/1 and
``label_names``: a MedMNIST NPZ whose labels are [N, C] with C > 1 (ChestMNIST: 14 findings), or a manifest whose
label field holds a list per row: a 0/1 vector of one length (as `meditok-data scan` writes for ChestMNIST) or
finding names (``["effusion", "edema"]``, ``[]`` = none). ``multi_label=True`` also splits string labels on
``label_sep`` (CSV manifests).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
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
    label_matrix: np.ndarray | None = None  # multi-label: [N, C] of 0/1 (then `labels` are display strings)
    label_names: list[str] | None = None

    @property
    def multi_label(self) -> bool:
        return self.label_matrix is not None

    def __len__(self) -> int:
        return len(self.keys)


# MedMNIST v2's ChestMNIST label order (NIH ChestX-ray14 findings).
CHESTMNIST_NAMES = [
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural",
    "hernia",
]


def _row_value(row, key: str):
    if key in ("modality", "dataset_name", "caption", "split"):
        return getattr(row, key)
    return row.extra.get(key)


def _single_label(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return str(value)


def row_label(row, key: str) -> str:
    """A row's single label as a string (a one-element list, as `meditok-data scan` writes for NPZ rows: its item)."""
    return _single_label(_row_value(row, key))


def _is_indicator(values: list) -> bool:
    lengths = {len(v) for v in values if isinstance(v, (list, tuple))}
    return (
        all(isinstance(v, (list, tuple)) for v in values)
        and len(lengths) == 1
        and lengths.pop() > 1
        and all(x in (0, 1) and not isinstance(x, str) for v in values for x in v)
    )


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_vectors(values: list, where: str) -> None:
    """Rows holding 0/1 vectors (indicators) must all be indicator vectors of one length: a vector of another length
    or a mix with name lists is an error (never re-read as class names "0" / "1"). Lists holding other numbers are
    class ids, read as names."""
    vectors = {
        i: v for i, v in enumerate(values) if isinstance(v, (list, tuple)) and v and all(_is_number(x) for x in v)
    }
    if not vectors or any(x not in (0, 1) for v in vectors.values() for x in v):
        return  # lists of class ids, read as names
    if all(len(v) == 1 for v in vectors.values()):
        return
    lengths: dict[int, int] = {}
    for i, v in vectors.items():
        lengths.setdefault(len(v), i + 1)
    if len(lengths) > 1:
        shown = ", ".join(f"length {n} (first at row {row})" for n, row in sorted(lengths.items()))
        raise EvalError(f"{where}: 0/1 label vectors of different lengths: {shown}; every row needs the same classes")
    others = [i + 1 for i, v in enumerate(values) if i not in vectors]
    if others:
        raise EvalError(
            f"{where}: rows {others[:5]} are not 0/1 vectors like row {next(iter(vectors)) + 1} "
            f"({values[others[0] - 1]!r}); every row needs a vector of length {next(iter(lengths))}"
        )


def is_multi_label(values: list, multi_label: bool | None = None) -> bool:
    """``multi_label`` None: auto (some row holds a list whose length is not 1)."""
    if multi_label is not None:
        return multi_label
    return any(isinstance(v, (list, tuple)) and len(v) != 1 for v in values)


def label_matrix(values: list, sep: str = "|", where: str = "labels") -> tuple[np.ndarray, list[str]]:
    """Multi-label values per row -> ([N, C] 0/1, class names). A 0/1 vector per row of one length C, or names:
    a list, or a string split on ``sep`` ("" and [] = no label)."""
    if _is_indicator(values):
        matrix = np.asarray(values, dtype=np.int64)
        return matrix, [str(i) for i in range(matrix.shape[1])]
    _check_vectors(values, where)
    sets = []
    for i, v in enumerate(values):
        if v is None:
            raise EvalError(f"{where}: row {i + 1} has no label")
        if isinstance(v, str):
            items = [x.strip() for x in v.split(sep)] if sep else [v]
        elif isinstance(v, (list, tuple)):
            items = [str(x).strip() for x in v]
        else:
            items = [str(v)]
        sets.append({x for x in items if x})
    names = sorted(set().union(*sets))
    if len(names) < 2:
        raise EvalError(f"{where}: multi-label data needs at least 2 classes, found {names}")
    matrix = np.array([[int(n in s) for n in names] for s in sets], dtype=np.int64)
    return matrix, names


def under_root(path: str | Path, root: Path) -> bool:
    """Whether ``path`` (made absolute, ``..`` removed, as written: a link placed inside the root by its owner is not
    followed) lies under ``root``."""
    normal = Path(os.path.normpath(os.path.abspath(path)))
    root = Path(os.path.normpath(os.path.abspath(root)))
    return normal == root or root in normal.parents


def _dedupe_and_confine(rows, path: Path, raw_paths: list[str], data_root, allow_outside_root: bool, note: bool):
    """Rows confined to the data root, one row per file (and frame/slice/entry).

    Without ``data_root``: a relative row that climbs out of the manifest's folder (``../``) is refused, an absolute
    one is accepted (what `meditok-data index ROOT -o elsewhere.jsonl` writes) and counted in a note. With
    ``data_root``: every row must resolve under it. ``allow_outside_root`` accepts both. Duplicates (one file under two
    spellings, links followed) keep the first row and are counted."""
    root = Path(data_root) if data_root is not None else path.parent
    kept, seen, refused, absolute_outside, duplicates = [], set(), [], 0, 0
    for row, raw in zip(rows, raw_paths):
        if not under_root(row.path, root):
            absolute = raw is not None and os.path.isabs(raw)
            if allow_outside_root or (data_root is None and absolute):
                absolute_outside += 1
            else:
                refused.append(raw if raw is not None else row.path)
                continue
        key = (os.path.realpath(row.path), row.index, row.plane or row.split or row.kind)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(row)
    if refused:
        raise EvalError(
            f"manifest {path}: {len(refused)} row(s) name files outside the data root {os.path.abspath(root)}, e.g. "
            f"{refused[:3]}; pass --allow-outside-root to read them (or --data-root to move the root)"
        )
    if note and absolute_outside and not allow_outside_root:
        print(
            f"note: manifest {path}: {absolute_outside} row(s) name files outside its folder by absolute path; "
            "--data-root DIR confines every row to DIR",
            file=sys.stderr,
        )
    if note and duplicates:
        print(
            f"note: manifest {path}: {duplicates} duplicate row(s) dropped (the same file under another spelling); "
            f"{len(kept)} row(s) kept",
            file=sys.stderr,
        )
    return kept, duplicates


def _raw_paths(path: Path) -> list[str | None]:
    """The path fields as the manifest writes them (a CSV's ``root_dir`` joined to its ``identifier``; None where
    unreadable)."""
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as handle:
            return [
                os.path.join(r.get("root_dir") or "", (r.get("identifier") or "").strip())
                for r in csv.DictReader(handle)
            ]
    raws = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                value = json.loads(line).get("path")
            except (json.JSONDecodeError, AttributeError):
                value = None
            raws.append(value if isinstance(value, str) else None)
    return raws


def load_manifest(
    path: str | Path,
    *,
    label_key: str | None = None,
    limit_per_group: int | None = None,
    seed: int = 0,
    data_root: str | Path | None = None,
    allow_outside_root: bool = False,
    note: bool = True,
):
    """Read and validate a manifest (.jsonl or the reference's .csv). Returns the rows (meditok-data ManifestRow).

    Rows are confined to the data root (`_dedupe_and_confine`: ``data_root``, default the manifest's folder, where
    absolute rows are accepted; ``allow_outside_root`` lifts it); rows naming one file twice (two spellings) are
    dropped, counted and, with ``note``, said on stderr (the count is the returned list's ``duplicates``). ``limit_per_group`` keeps at most
    that many rows per modality (spread evenly, deterministic)."""
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
    raws = _raw_paths(path)
    raws = raws if len(raws) == len(rows) else [r.path if os.path.isabs(r.path) else None for r in rows]
    rows, duplicates = _dedupe_and_confine(rows, path, raws, data_root, allow_outside_root, note)
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
    return ManifestRows(rows, duplicates)


class ManifestRows(list):
    """The rows `load_manifest` returns, with ``duplicates``: how many duplicate rows it dropped."""

    def __init__(self, rows, duplicates: int = 0):
        super().__init__(rows)
        self.duplicates = duplicates


def manifest_label_matrix(
    rows, label_key: str | None, multi_label: bool | None = None, label_sep: str = "|", where: str = "manifest"
) -> tuple[np.ndarray | None, list[str] | None]:
    """([N, C], names) when the rows' ``label_key`` values are multi-label (see the module docstring), else
    (None, None); raises `EvalError` for unusable labels (call it before any work)."""
    if not label_key:
        return None, None
    values = [_row_value(r, label_key) for r in rows]
    if not is_multi_label(values, multi_label):
        return None, None
    return label_matrix(values, label_sep, f"{where}: label {label_key!r}")


def image_input_of(args, weights: str | Path | None = None, base=None):
    """The `ImageInput` of an evaluation: ``base`` (a model's recorded settings), else the tokenizer's (``weights``),
    else the reference's, with the command line's ``--size / --resize / --resampler / --ct-window`` over them. Real and
    generated images, manifests and NPZ files all go through it, as every other door does."""
    from meditok.tokenizer.api import read_image_input
    from meditok.tokenizer.preprocessing import ImageInput, parse_ct_window

    try:
        if base is None:
            base = read_image_input(weights) if weights and Path(weights).exists() else ImageInput()
        window = parse_ct_window(getattr(args, "ct_window", None))
        return base.with_overrides(size=getattr(args, "size", None), resize=getattr(args, "resize", None),
                                   resampler=getattr(args, "resampler", None), ct_window=window)  # fmt: skip
    except ValueError as exc:
        raise EvalError(f"image input settings: {exc}") from None


def images_from_rows(
    rows,
    *,
    image_input=None,
    size: int | None = None,
    resize: str | None = None,
    name: str = "data",
    label_key: str | None = None,
    progress: bool = True,
    multi_label: bool | None = None,
    label_sep: str = "|",
) -> EvalSet:
    """Decode manifest rows through the image-input contract (``image_input``: an `ImageInput`, default the
    reference's) into an `EvalSet` (multi-label: see the module docstring; ``multi_label`` None = auto)."""
    from meditok.data import MedicalImageError, Preprocess, load_row
    from meditok.tokenizer.preprocessing import ImageInput

    matrix, names = manifest_label_matrix(rows, label_key, multi_label, label_sep, name)

    spec = (image_input or ImageInput()).with_overrides(size=size, resize=resize)
    prepare = Preprocess.from_spec(spec)  # eval mode: the image-input contract
    images, groups, keys, labels, splits = [], [], [], [], []
    for row in tqdm(rows, desc=f"load {name}", unit="img", disable=not progress):
        try:
            images.append(prepare(load_row(row)))
        except (MedicalImageError, ValueError) as exc:
            raise EvalError(f"cannot read {row.key}: {exc}") from None
        except Image.DecompressionBombError as exc:
            raise EvalError(f"cannot read {row.key}: image too large ({exc})") from None
        except MemoryError:
            raise EvalError(f"cannot read {row.key}: out of memory decoding it") from None
        groups.append(row.modality)
        keys.append(row.key)
        labels.append(_single_label(_row_value(row, label_key)) if label_key else row.modality)
        splits.append(row.split or "")
    if matrix is not None:
        labels = ["|".join(n for n, on in zip(names, m) if on) for m in matrix]
    return EvalSet(name, torch.stack(images), groups, keys, labels, splits, label_matrix=matrix, label_names=names)


def load_eval_set(
    path: str | Path,
    *,
    image_input=None,
    size: int | None = None,
    resize: str | None = None,
    label_key: str | None = None,
    limit_per_group: int | None = None,
    progress: bool = True,
    multi_label: bool | None = None,
    label_sep: str = "|",
    data_root: str | Path | None = None,
    allow_outside_root: bool = False,
) -> EvalSet:
    rows = load_manifest(path, label_key=label_key, limit_per_group=limit_per_group, data_root=data_root,
                         allow_outside_root=allow_outside_root, note=False)  # fmt: skip
    data = images_from_rows(
        rows,
        image_input=image_input,
        size=size,
        resize=resize,
        name=Path(path).stem,
        label_key=label_key,
        progress=progress,
        multi_label=multi_label,
        label_sep=label_sep,
    )
    data.extra["duplicate_rows_dropped"] = rows.duplicates
    return data


def check_npz(path: str | Path) -> dict:
    """Validate a MedMNIST-style NPZ (``{train,val,test}_images`` + ``_labels``: [N] / [N, 1] class indices, or
    [N, C] 0/1 multi-label targets, C the same in every split); returns {split: count}."""
    path = Path(path)
    if not path.exists():
        raise EvalError(f"NPZ file not found: {path}")
    try:
        data = np.load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise EvalError(f"cannot read NPZ {path}: {exc}") from None
    counts, widths = {}, set()
    for split in ("train", "val", "test"):
        if f"{split}_images" in data.files:
            if f"{split}_labels" not in data.files:
                raise EvalError(f"NPZ {path}: has {split}_images but no {split}_labels")
            n_img, labels = len(data[f"{split}_images"]), data[f"{split}_labels"]
            if len(labels) != n_img:
                raise EvalError(f"NPZ {path}: {n_img} {split} images but {len(labels)} labels")
            if labels.ndim > 2:
                raise EvalError(f"NPZ {path}: {split}_labels has shape {labels.shape}, expected [N] or [N, C]")
            width = labels.shape[1] if labels.ndim == 2 else 1
            if width > 1 and not np.isin(labels, (0, 1)).all():
                raise EvalError(f"NPZ {path}: multi-label {split}_labels {labels.shape} must hold only 0 and 1")
            widths.add(width)
            counts[split] = n_img
    if len(widths) > 1:
        raise EvalError(f"NPZ {path}: the splits have different label widths {sorted(widths)}")
    if "train" not in counts or not ({"val", "test"} & set(counts)):
        raise EvalError(f"NPZ {path}: needs train_images/train_labels and test_* (or val_*), has {data.files}")
    return counts


def load_npz(
    path: str | Path,
    *,
    image_input=None,
    size: int | None = None,
    max_per_split: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> EvalSet:
    """MedMNIST NPZ -> EvalSet with splits 'train' and 'test' (``val`` is used as test when there is no test).
    Labels [N, C] with C > 1 make a multi-label set (ChestMNIST's 14 findings get their names). The 8-bit images go
    through the image-input contract (``image_input``, default the reference's LANCZOS squash to 256)."""
    from meditok.tokenizer.preprocessing import ImageInput, preprocess

    spec = (image_input or ImageInput()).with_overrides(size=size)
    path = Path(path)
    counts = check_npz(path)
    data = np.load(path)
    test_split = "test" if "test" in counts else "val"
    images, labels, rows, splits, keys = [], [], [], [], []
    rng = random.Random(seed)
    width = 1
    for split in ("train", test_split):
        arr = data[f"{split}_images"]
        lab = data[f"{split}_labels"].reshape(len(arr), -1)
        width = lab.shape[1]
        order = list(range(len(arr)))
        if max_per_split and len(order) > max_per_split:
            order = sorted(rng.sample(order, max_per_split))
        for i in tqdm(order, desc=f"load {path.stem}:{split}", unit="img", disable=not progress):
            try:
                images.append(preprocess(arr[i], spec)[0])
            except (ValueError, TypeError) as exc:
                raise EvalError(f"NPZ {path}: {split}_images[{i}]: {exc}") from None
            rows.append(lab[i].astype(np.int64))
            labels.append(str(int(lab[i, 0])))
            splits.append("train" if split == "train" else "test")
            keys.append(f"{path.name}#{split}={i}")
    modality = path.stem.replace("mnist", "")
    matrix = names = None
    if width > 1:
        matrix = np.stack(rows)
        stem = path.stem.split("_")[0].lower()
        names = CHESTMNIST_NAMES if stem == "chestmnist" and width == 14 else [str(i) for i in range(width)]
        labels = ["|".join(n for n, on in zip(names, m) if on) for m in matrix]
    return EvalSet(
        path.stem,
        torch.stack(images),
        [modality] * len(keys),
        keys,
        labels,
        splits,
        label_matrix=matrix,
        label_names=names,
    )


def read_json_or_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise EvalError(f"file not found: {path}")
    if path.is_dir():
        raise EvalError(f"{path}: is a directory; expected a .jsonl or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None
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
