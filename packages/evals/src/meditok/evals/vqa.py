"""VQA files, answerers and scorers (VQA-RAD / SLAKE / PMC-VQA style).

Question files (.jsonl or .json list), one object per question; accepted field names:
  id: ``question_id`` | ``qid`` | ``id``;  image: ``image`` | ``image_name`` | ``img_name`` | ``Figure_path``
  (relative to ``--image-root`` or the file's folder, and confined to it: an absolute or ``../`` path outside is
  an error unless ``--allow-outside-root``; before answering, every image must open as an image, DICOM or NIfTI, so
  nothing else is ever uploaded);  question: ``question`` | ``text`` | ``Question``
  (a trailing ``<image>`` is dropped);  answer: ``answer`` | ``gt_answer`` | ``Answer``;
  type: ``answer_type`` | ``type`` (``CLOSED``/``OPEN``; SLAKE/VQA-RAD) — questions with options are multiple choice;
  options (PMC-VQA): ``options`` {"A": "..."} or a list, or ``Choice A`` … ``Choice D`` columns ("A:text");
  the answer of a multiple-choice question is a letter (``Answer_label``/``answer``) or the option text;
  dataset: ``dataset`` (default: the file name).
Prediction files: .jsonl with the id and ``text`` | ``prediction`` | ``answer`` | ``output``.

Scoring (after normalisation: lower case, punctuation -> space, articles a/an/the removed, whitespace collapsed):
  * closed: exact match; when the ground truth is "yes"/"no", the first yes/no word of the prediction is compared.
  * open: recall = |answer tokens ∩ prediction tokens| / |answer tokens| (LLaVA-Med), and exact match.
  * multiple choice: the chosen letter (a leading "A", "(B)", "C.", "Answer: D", or an option's full text) equals
    the answer letter.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
import string
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meditok.evals.data import read_json_or_jsonl
from meditok.evals.errors import EvalError

ARTICLES = {"a", "an", "the"}
LETTERS = "ABCDEFGH"


@dataclass
class Question:
    qid: str
    question: str
    answer: str
    kind: str  # closed | open | choice
    image: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    dataset: str = ""


def normalize(text: str) -> str:
    text = str(text).lower().replace("<image>", " ")
    text = text.translate(str.maketrans({c: " " for c in string.punctuation}))
    return " ".join(w for w in text.split() if w not in ARTICLES)


def _first(obj: dict, names: tuple[str, ...]):
    for n in names:
        if n in obj and obj[n] not in (None, ""):
            return obj[n]
    return None


def _options(obj: dict) -> dict[str, str]:
    opts = obj.get("options") or obj.get("choices")
    if isinstance(opts, dict):
        return {str(k).strip().upper(): str(v) for k, v in opts.items()}
    if isinstance(opts, list):
        return {LETTERS[i]: re.sub(r"^\s*[A-H]\s*[:.)]\s*", "", str(v)) for i, v in enumerate(opts)}
    found = {}
    for letter in LETTERS:
        v = obj.get(f"Choice {letter}")
        if v not in (None, ""):
            found[letter] = re.sub(rf"^\s*{letter}\s*[:.)]\s*", "", str(v))
    return found


def _checked_image(image_path: Path, checked: dict[Path, str | None]) -> str | None:
    """Why ``image_path`` cannot be sent as an image (None: it opens as an image, DICOM or NIfTI); cached per file."""
    if image_path not in checked:
        from meditok.tokenizer.image_files import ImageFileError, check_image_header, load_image

        try:
            check_image_header(image_path)
            load_image(image_path)  # the file really decodes: nothing else is ever uploaded
            checked[image_path] = None
        except ImageFileError as exc:
            checked[image_path] = str(exc)
        except MemoryError:
            checked[image_path] = f"{image_path}: out of memory reading it"
    return checked[image_path]


def load_questions(
    path: str | Path,
    image_root: str | Path | None = None,
    check_images: bool = False,
    allow_outside_root: bool = False,
) -> list[Question]:
    """Questions of a .jsonl/.json file (see the module docstring). Image fields resolve (``..`` and symlinks
    followed) under ``image_root`` (default: the file's folder); one outside it is an error unless
    ``allow_outside_root``. ``check_images`` (the images will be read or uploaded): each must exist and open as an
    image, DICOM or NIfTI, checked before any question is answered."""
    path = Path(path)
    records = read_json_or_jsonl(path)
    root = Path(os.path.realpath(image_root if image_root else path.parent))
    out, seen, checked = [], set(), {}
    for n, obj in enumerate(records, start=1):
        if not isinstance(obj, dict):
            raise EvalError(f"{path}: entry {n} is not an object")
        qid = _first(obj, ("question_id", "qid", "id"))
        question = _first(obj, ("question", "text", "Question"))
        answer = _first(obj, ("answer", "gt_answer", "Answer", "Answer_label"))
        missing = [k for k, v in (("id", qid), ("question", question), ("answer", answer)) if v is None]
        if missing:
            raise EvalError(f"{path}: entry {n} lacks {missing} (has {sorted(obj)})")
        qid = str(qid)
        if qid in seen:
            raise EvalError(f"{path}: duplicate question id {qid!r}")
        seen.add(qid)
        options = _options(obj)
        if options:
            kind = "choice"
            label = obj.get("Answer_label") or answer
            letter = str(label).strip().upper()
            if letter not in options:
                matches = [k for k, v in options.items() if normalize(v) == normalize(str(answer))]
                if not matches:
                    raise EvalError(f"{path}: entry {n}: answer {answer!r} is neither an option letter nor an option")
                letter = matches[0]
            answer = letter
        else:
            t = str(_first(obj, ("answer_type", "type")) or "").upper()
            if t not in ("CLOSED", "OPEN"):
                t = "CLOSED" if normalize(str(answer)) in ("yes", "no") else "OPEN"
            kind = t.lower()
        image = _first(obj, ("image", "image_name", "img_name", "Figure_path"))
        image_path = None
        if image:
            given = Path(str(image))
            resolved = Path(os.path.realpath(given if given.is_absolute() else root / given))
            if not allow_outside_root and resolved != root and root not in resolved.parents:
                raise EvalError(
                    f"{path}: entry {n}: image {str(image)!r} resolves to {resolved}, outside the image root {root}; "
                    "pass --allow-outside-root to allow it (or --image-root to move the root)"
                )
            image_path = str(resolved)
            if check_images:
                if not resolved.exists():
                    raise EvalError(f"{path}: entry {n}: image not found: {resolved}")
                problem = _checked_image(resolved, checked)
                if problem:
                    raise EvalError(f"{path}: entry {n}: not an image, nothing sent: {problem}")
        text = str(question).replace("<image>", "").strip()
        out.append(Question(qid, text, str(answer), kind, image_path, options, str(obj.get("dataset") or path.stem)))
    if not out:
        raise EvalError(f"{path}: no questions")
    return out


def load_predictions(path: str | Path) -> dict[str, str]:
    preds = {}
    for n, obj in enumerate(read_json_or_jsonl(path), start=1):
        qid = _first(obj, ("question_id", "qid", "id"))
        text = _first(obj, ("text", "prediction", "answer", "output"))
        if qid is None or text is None:
            raise EvalError(f"{path}: entry {n} needs an id and a text/prediction field")
        preds[str(qid)] = str(text)
    return preds


def closed_correct(prediction: str, answer: str) -> bool:
    p, a = normalize(prediction), normalize(answer)
    if a in ("yes", "no"):
        first = next((w for w in p.split() if w in ("yes", "no")), None)
        return first == a
    return p == a


def open_recall(prediction: str, answer: str) -> float:
    a = set(normalize(answer).split())
    if not a:
        return 0.0
    return len(a & set(normalize(prediction).split())) / len(a)


def chosen_letter(prediction: str, options: dict[str, str]) -> str | None:
    text = prediction.strip()
    m = re.match(
        r"^\s*(?:the\s+)?(?:answer|option|choice)?\s*(?:is)?\s*[:\-]?\s*\(?([A-Ha-h])\s*(?:[).:,]|$|\s)",
        text,
        re.IGNORECASE,
    )
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    norm = normalize(text)
    hits = [k for k, v in options.items() if normalize(v) and normalize(v) == norm]
    if not hits:
        hits = [k for k, v in options.items() if normalize(v) and normalize(v) in norm]
    return hits[0] if len(hits) == 1 else None


def score(questions: list[Question], predictions: dict[str, str], strict: bool = True) -> dict:
    """Per-question scores and aggregates per data set and overall."""
    missing = [q.qid for q in questions if q.qid not in predictions]
    if missing and strict:
        raise EvalError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}")
    items = []
    for q in questions:
        pred = predictions.get(q.qid, "")
        item = {"question_id": q.qid, "dataset": q.dataset, "kind": q.kind, "answer": q.answer, "prediction": pred}
        if q.kind == "closed":
            item["correct"] = closed_correct(pred, q.answer)
        elif q.kind == "open":
            item["recall"] = open_recall(pred, q.answer)
            item["correct"] = normalize(pred) == normalize(q.answer)
        else:
            item["chosen"] = chosen_letter(pred, q.options)
            item["correct"] = item["chosen"] == q.answer
        items.append(item)

    def aggregate(sel: list[dict]) -> dict:
        closed = [i for i in sel if i["kind"] == "closed"]
        opened = [i for i in sel if i["kind"] == "open"]
        choice = [i for i in sel if i["kind"] == "choice"]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "n": len(sel),
            "n_closed": len(closed),
            "n_open": len(opened),
            "n_choice": len(choice),
            "closed_accuracy": mean([float(i["correct"]) for i in closed]),
            "open_recall": mean([i["recall"] for i in opened]),
            "open_exact": mean([float(i["correct"]) for i in opened]),
            "choice_accuracy": mean([float(i["correct"]) for i in choice]),
        }

    by_ds: dict[str, list[dict]] = defaultdict(list)
    for i in items:
        by_ds[i["dataset"]].append(i)
    return {
        "overall": aggregate(items),
        "per_dataset": {d: aggregate(s) for d, s in sorted(by_ds.items())},
        "items": items,
        "missing_predictions": missing,
    }


# ------------------------------------------------------------------------------------------------------ answerers


def prompt_for(q: Question) -> str:
    if q.kind == "choice":
        opts = "\n".join(f"{k}: {v}" for k, v in sorted(q.options.items()))
        return f"{q.question}\n{opts}\nAnswer with the option's letter from the given choices directly."
    if q.kind == "closed":
        return f"{q.question}\nAnswer the question using a single word or phrase."
    return q.question


class CallableAnswerer:
    """Wraps ``fn(image_path_or_None, prompt) -> str``."""

    def __init__(self, fn: Callable[[str | None, str], str], name: str = "callable"):
        self.fn, self.name = fn, name

    def __call__(self, q: Question) -> str:
        return str(self.fn(q.image, prompt_for(q)))


class OpenAIChatAnswerer:
    """An OpenAI-compatible chat-completions server (e.g. ``vllm serve``), standard library only.

    Images go inline as base64 data URLs (``image_url`` content parts); temperature 0 by default."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_tokens: int = 64,
        temperature: float = 0.0,
    ):
        base = url.rstrip("/")
        self.endpoint = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_tokens, self.temperature = max_tokens, temperature
        self.name = f"{self.model or 'server model'} @ {base}"

    def _post(self, path: str | None, payload: dict | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(
            path or self.endpoint, data=data, headers=headers, method="POST" if data is not None else "GET"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:300]
            raise EvalError(f"{req.full_url}: HTTP {exc.code}: {body}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise EvalError(f"cannot reach {req.full_url}: {exc}") from None

    def check(self) -> None:
        """Fail early: list the server's models (and pick the first when no model was given)."""
        models = self._post(self.endpoint.replace("/chat/completions", "/models"), None)
        ids = [m.get("id") for m in models.get("data", [])]
        if self.model is None:
            if not ids:
                raise EvalError(f"{self.endpoint}: the server lists no models")
            self.model = ids[0]
        elif ids and self.model not in ids:
            raise EvalError(f"model {self.model!r} not served; the server has {ids}")

    def __call__(self, q: Question) -> str:
        content: list[dict] = [{"type": "text", "text": prompt_for(q)}]
        if q.image:
            mime = mimetypes.guess_type(q.image)[0] or "image/png"
            b64 = base64.b64encode(Path(q.image).read_bytes()).decode()
            content.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}})
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        out = self._post(None, payload)
        try:
            return out["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EvalError(f"{self.endpoint}: unexpected response {str(out)[:200]}") from None


def load_ar_model(path: str):
    """The AR model from a local folder through ``meditok.ar.MedITokAR`` (imported lazily; transformers backend)."""
    if not Path(path).exists():
        raise EvalError(f"AR model not found: {path}")
    try:
        from meditok.ar import MedITokAR
    except ImportError as exc:
        raise EvalError(f"--model-path needs meditok-ar (pip install meditok-ar): {exc}") from None
    return MedITokAR.from_pretrained(path)


class TransformersAnswerer:
    """``meditok.ar`` model loaded from a path; calls ``model.answer(image_path, prompt)``."""

    def __init__(self, path: str):
        self.model = load_ar_model(path)
        if not hasattr(self.model, "answer"):
            raise EvalError(f"{type(self.model).__name__} has no answer(image, question)")
        self.name = f"meditok.ar {Path(path).name}"

    def __call__(self, q: Question) -> str:
        return str(self.model.answer(q.image, prompt_for(q)))


def answer_all(answerer, questions: list[Question], progress: bool = True) -> dict[str, str]:
    from tqdm.auto import tqdm

    return {q.qid: answerer(q) for q in tqdm(questions, desc="answer", unit="q", disable=not progress)}


def write_vqa_report(report, result: dict, answerer_name: str, notes: list[str]) -> None:
    from meditok.evals import plots

    report.text(
        f"Answers from {answerer_name}. Closed: exact match after normalisation (yes/no: first yes/no word); "
        "open: token recall of the ground truth (and exact match); multiple choice: chosen letter.",
        *notes,
    )
    rows = [
        [
            d,
            s["n"],
            s["n_closed"],
            s["closed_accuracy"],
            s["n_open"],
            s["open_recall"],
            s["open_exact"],
            s["n_choice"],
            s["choice_accuracy"],
        ]
        for d, s in [*result["per_dataset"].items(), ("overall", result["overall"])]
    ]
    report.table(
        ["dataset", "n", "closed n", "closed acc", "open n", "open recall", "open exact", "MC n", "MC acc"], rows
    )
    bars = {
        m: {d: s[m] for d, s in result["per_dataset"].items() if s[m] is not None}
        for m in ("closed_accuracy", "open_recall", "choice_accuracy")
    }
    plots.grouped_bars(
        {k: v for k, v in bars.items() if v}, report.figure("vqa_per_dataset.png", "VQA scores"), "score"
    )
    report.text("## Examples")
    report.table(
        ["id", "kind", "answer", "prediction", "correct"],
        [
            [i["question_id"], i["kind"], i["answer"], i["prediction"][:80].replace("|", "/"), i["correct"]]
            for i in result["items"][:12]
        ],
    )
    if result["missing_predictions"]:
        report.text(f"**{len(result['missing_predictions'])} questions had no prediction** (scored as wrong).")
    report.metrics.update({"answerer": answerer_name, **result})
