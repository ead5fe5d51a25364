"""`meditok-eval zeroshot`: zero-shot classification with MedITok's text-aligned image embedding against class
prompts embedded by a text tower loaded from a local path.

Text towers: a ``meditok`` directory written by the tokenizer's training code (`save_aux(TextTower)`), or any
Python callable ``module:factory`` returning an object with ``encode_text(list[str]) -> [N, D]``. The tower's
output dimension must equal the tokenizer's embedding dimension (checked before any work).
Prompts: a JSON file ``{"class": ["prompt", ...]}``; by default meditok-data's caption template per modality
("A CT image.") or ``"A {class} image."``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from meditok.evals import plots
from meditok.evals.data import EvalSet
from meditok.evals.errors import EvalError
from meditok.evals.metrics import classification_metrics, confusion_matrix
from meditok.evals.report import Report


def load_text_tower(spec: str):
    if ":" in spec and not Path(spec).exists():
        module, _, attr = spec.partition(":")
        try:
            tower = getattr(importlib.import_module(module), attr)()
        except (ImportError, AttributeError) as exc:
            raise EvalError(f"cannot import text tower {spec!r}: {exc}") from None
        if not hasattr(tower, "encode_text"):
            raise EvalError(f"text tower {spec!r} has no encode_text(list[str])")
        return tower
    path = Path(spec).expanduser()
    if not path.exists():
        raise EvalError(f"text tower not found: {path}")
    try:
        from meditok.tokenizer.training.aux_models import AuxModelError
        from meditok.tokenizer.training.aux_models import load_text_tower as _load
    except ImportError as exc:
        raise EvalError(f"loading a meditok text tower needs meditok.tokenizer.training: {exc}") from None
    try:
        return _load(str(path), what="--text-tower")
    except AuxModelError as exc:
        raise EvalError(str(exc)) from None


def default_prompts(classes: list[str]) -> dict[str, list[str]]:
    from meditok.data import MODALITIES, template_caption

    return {c: [template_caption(c) if c in MODALITIES else f"A {c} image."] for c in classes}


def load_prompts(path: str | None, classes: list[str]) -> dict[str, list[str]]:
    if not path:
        return default_prompts(classes)
    p = Path(path)
    if not p.exists():
        raise EvalError(f"prompt file not found: {p}")
    try:
        prompts = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise EvalError(f"prompt file {p}: malformed JSON ({exc})") from None
    if not isinstance(prompts, dict):
        raise EvalError(f"prompt file {p}: expected an object {{class: [prompts]}}")
    prompts = {k: [v] if isinstance(v, str) else list(v) for k, v in prompts.items()}
    missing = [c for c in classes if not prompts.get(c)]
    if missing:
        raise EvalError(f"prompt file {p} has no prompts for class(es) {missing}")
    return prompts


@torch.inference_mode()
def class_embeddings(tower, prompts: dict[str, list[str]], classes: list[str]) -> torch.Tensor:
    rows = []
    for c in classes:
        e = F.normalize(torch.as_tensor(tower.encode_text(prompts[c])).float(), dim=-1).mean(0)
        rows.append(F.normalize(e, dim=-1))
    return torch.stack(rows)


def check_dims(tok, tower) -> None:
    with torch.inference_mode():
        d_text = torch.as_tensor(tower.encode_text(["probe"])).shape[-1]
    d_img = tok.config.embed_dim
    if d_text != d_img:
        raise EvalError(f"text tower outputs {d_text}-d embeddings but the tokenizer's image embedding is {d_img}-d")


def evaluate_zeroshot(
    tok,
    tower,
    data: EvalSet,
    prompts: dict[str, list[str]],
    classes: list[str],
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    text = class_embeddings(tower, prompts, classes)
    embs = []
    for i in tqdm(range(0, len(data), batch_size), desc="embed images", unit="batch", disable=not progress):
        embs.append(tok.embed_image(data.images[i : i + batch_size]).float().cpu())
    img = torch.cat(embs)
    logits = img @ text.T
    y = np.array([classes.index(label) for label in data.labels])
    scores = torch.softmax(logits * 100.0, dim=1).numpy()
    metrics = classification_metrics(scores, y, len(classes))
    pred = logits.argmax(1).numpy()
    metrics["per_class_accuracy"] = {
        c: float((pred[y == i] == i).mean()) if (y == i).any() else None for i, c in enumerate(classes)
    }
    metrics["confusion"] = confusion_matrix(pred, y, len(classes)).tolist()
    metrics["logits"] = logits.tolist()
    metrics["targets"] = y.tolist()
    metrics["prompts"] = {c: prompts[c] for c in classes}
    return metrics


def write_zeroshot_report(report: Report, data: EvalSet, classes: list[str], m: dict, notes: list[str]) -> None:
    report.text(
        f"{len(data)} images of `{data.name}`, {len(classes)} classes. Score = cosine between the l2-normalised "
        "image embedding and the mean of the class's l2-normalised prompt embeddings; AUC/mAP from "
        "softmax(100 x cosine).",
        *notes,
    )
    report.table(["accuracy", "AUC", "mAP"], [[m["accuracy"], m["auc"], m["map"]]])
    report.table(
        ["class", "n", "accuracy", "prompts"],
        [[c, data.labels.count(c), m["per_class_accuracy"][c], " / ".join(m["prompts"][c])] for c in classes],
    )
    plots.confusion_plot(np.array(m["confusion"]), classes, report.figure("confusion.png", "zero-shot confusion"))
    plots.grouped_bars(
        {"zero-shot": {c: v for c, v in m["per_class_accuracy"].items() if v is not None}},
        report.figure("accuracy_per_class.png", "accuracy per class"),
        "accuracy",
    )
    report.metrics.update({"dataset": data.name, "classes": classes, **m})
