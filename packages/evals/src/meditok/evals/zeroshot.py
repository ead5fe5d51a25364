"""`meditok-eval zeroshot`: zero-shot classification with MedITok's text-aligned image embedding against class
prompts embedded by a text tower loaded from a local path.

Text towers: a ``meditok`` directory written by the tokenizer's training code (`save_aux(TextTower)`), an ``hf_bert``
folder (BiomedCLIP's PubMedBERT: a local Hugging Face BERT folder + ``open_clip_pytorch_model.bin``, loaded by the
same code as stage-2 training; needs transformers), or any Python callable ``module:factory`` returning an object with
``encode_text(list[str]) -> [N, D]``.

Text alignment: stage-2 training maps the frozen tower's output through trainable adapters (LayerNorm + Linear) into
the tokenizer's embedding space; `meditok export` writes them as ``text_alignment.safetensors`` + ``.json`` next to
the release. When the ``--weights`` directory holds them (or ``--text-alignment DIR`` points at them) prompts are
embedded as ``normalize(Linear(LN(tower(prompt))))`` and class scores use the trained logit scale; the tower's format,
path, checkpoint and context length default to what the run recorded. Without alignment the tower's output dimension
must equal the tokenizer's embedding dimension. Every check happens before any image is read.
Prompts: a JSON file ``{"class": ["prompt", ...]}``; by default meditok-data's caption template per modality
("A CT image.") or ``"A {class} image."``.
"""

from __future__ import annotations

import importlib
import json
import pickle
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

TEXT_FORMATS = ("meditok", "hf_bert")
DEFAULT_SCALE = 100.0  # softmax temperature of the scores without a trained logit scale


def load_text_tower(spec: str, fmt: str = "meditok", checkpoint: str | None = None, context_length: int | None = None):
    """A text tower from a local path (``fmt``: meditok | hf_bert) or a ``package.module:factory``."""
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
    if fmt not in TEXT_FORMATS:
        raise EvalError(f"unknown text tower format {fmt!r} ({' | '.join(TEXT_FORMATS)})")
    try:
        from meditok.tokenizer.auxiliary import AuxModelError
        from meditok.tokenizer.auxiliary import load_text_tower as _load
    except ImportError as exc:
        raise EvalError(f"loading a meditok text tower needs meditok.tokenizer.auxiliary: {exc}") from None
    kwargs = {"checkpoint": checkpoint}
    if context_length:
        kwargs["context_length"] = int(context_length)
    try:
        return _load(str(path), fmt, what="--text-tower", **kwargs)
    except AuxModelError as exc:
        message = str(exc).replace("teacher.checkpoint", "--text-checkpoint")
        raise EvalError(message.replace("teacher.context_length", "--context-length")) from None
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:  # unreadable file
        raise EvalError(f"--text-tower: cannot read {path}: {str(exc).splitlines()[0][:200]}") from None


def resolve_alignment(weights: str | Path, option: str | None):
    """The exported text alignment to use: ``option`` "none" -> None; a path -> that (must exist); None/"auto" ->
    the one inside the ``--weights`` directory, if any."""
    if option == "none":
        return None
    try:
        from meditok.tokenizer.auxiliary import TextAlignmentError, find_text_alignment, load_text_alignment
    except ImportError as exc:
        if option in (None, "auto"):
            return None
        raise EvalError(f"reading a text alignment needs meditok.tokenizer.auxiliary: {exc}") from None
    if option in (None, "auto"):
        found = find_text_alignment(weights) if Path(weights).is_dir() else None
        if found is None:
            return None
        source = found
    else:
        source = Path(option).expanduser()
        if not source.exists():
            raise EvalError(f"--text-alignment not found: {source}")
    try:
        return load_text_alignment(source)
    except TextAlignmentError as exc:
        raise EvalError(str(exc)) from None


def tower_settings(tower: str | None, fmt: str | None, checkpoint: str | None, context_length: int | None, alignment):
    """The tower to load: command-line values first, then what the aligned training run recorded. The recorded
    checkpoint (hf_bert) goes with the recorded tower path only: with ``--text-tower`` the default is the
    ``open_clip_pytorch_model.bin`` inside that folder, unless ``--text-checkpoint`` says otherwise."""
    recorded = alignment.text_tower if alignment is not None else {}
    spec = tower or recorded.get("path")
    if not spec:
        raise EvalError(
            "no text tower: pass --text-tower PATH"
            + ("" if alignment is None else " (the text alignment records no tower path)")
        )
    if not tower and not Path(spec).expanduser().exists():
        raise EvalError(
            f"text tower not found: {spec} (the path the training run recorded in text_alignment.json); pass "
            "--text-tower PATH (and --text-checkpoint if BiomedCLIP's checkpoint is not inside that folder)"
        )
    return {
        "spec": spec,
        "fmt": fmt or recorded.get("format") or "meditok",
        "checkpoint": checkpoint or (None if tower else recorded.get("checkpoint")),
        "context_length": context_length or recorded.get("context_length"),
    }


class AlignedTextTower:
    """A frozen text tower followed by the exported stage-2 adapters: ``encode_text`` gives l2-normalised embeddings
    in the tokenizer's embedding space."""

    def __init__(self, tower, alignment):
        self.tower, self.alignment = tower, alignment

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.alignment(torch.as_tensor(self.tower.encode_text(list(texts))).float())


def check_alignment(tower, alignment) -> None:
    with torch.inference_mode():
        d_text = torch.as_tensor(tower.encode_text(["probe"])).shape[-1]
    if d_text != alignment.input_dim:
        raise EvalError(
            f"text tower outputs {d_text}-d features but the text alignment expects {alignment.input_dim}-d (the "
            f"training run used {alignment.text_tower.get('format')} tower {alignment.text_tower.get('path')})"
        )


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
        hint = (
            ""
            if isinstance(tower, AlignedTextTower)
            else " (a stage-2 tokenizer exported with `meditok export` carries text_alignment.* adapters that map a "
            "text tower into its space: pass the release directory as --weights or use --text-alignment DIR)"
        )
        raise EvalError(
            f"text tower outputs {d_text}-d embeddings but the tokenizer's image embedding is {d_img}-d{hint}"
        )


def evaluate_zeroshot(
    tok,
    tower,
    data: EvalSet,
    prompts: dict[str, list[str]],
    classes: list[str],
    batch_size: int = 16,
    progress: bool = True,
    logit_scale: float = DEFAULT_SCALE,
) -> dict:
    """Cosine logits [N, C] (image embedding vs. the mean of each class's prompt embeddings), accuracy (argmax) and
    AUC/mAP of softmax(logit_scale x cosine)."""
    text = class_embeddings(tower, prompts, classes)
    embs = []
    for i in tqdm(range(0, len(data), batch_size), desc="embed images", unit="batch", disable=not progress):
        embs.append(tok.embed_image(data.images[i : i + batch_size]).float().cpu())
    img = torch.cat(embs)
    logits = img @ text.T
    y = np.array([classes.index(label) for label in data.labels])
    scores = torch.softmax(logits * logit_scale, dim=1).numpy()
    metrics = classification_metrics(scores, y, len(classes))
    pred = logits.argmax(1).numpy()
    metrics["per_class_accuracy"] = {
        c: float((pred[y == i] == i).mean()) if (y == i).any() else None for i, c in enumerate(classes)
    }
    metrics["confusion"] = confusion_matrix(pred, y, len(classes)).tolist()
    metrics["logits"] = logits.tolist()
    metrics["logit_scale"] = float(logit_scale)
    metrics["targets"] = y.tolist()
    metrics["prompts"] = {c: prompts[c] for c in classes}
    return metrics


def write_zeroshot_report(report: Report, data: EvalSet, classes: list[str], m: dict, notes: list[str]) -> None:
    report.text(
        f"{len(data)} images of `{data.name}`, {len(classes)} classes. Score = cosine between the l2-normalised "
        "image embedding and the mean of the class's l2-normalised prompt embeddings; AUC/mAP from "
        f"softmax({m['logit_scale']:.4g} x cosine).",
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
