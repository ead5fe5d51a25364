"""`vqa --model-path` and `gen --model-path` drive a real meditok.ar model (tiny, untrained, built on the spot)."""

from __future__ import annotations

import json
import re
import string

import pytest

from meditok.evals import vqa
from meditok.evals.cli import main


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory, tiny_weights):
    from meditok.ar.model import MedITokAR
    from meditok.ar.testing import build_llama, train_text_tokenizer

    root = tmp_path_factory.mktemp("ar")
    texts = ["Chest radiograph. Heart size normal.", "No pneumothorax. Lungs are clear.", "Is there a fracture? yes no"]
    text_tok = train_text_tokenizer(texts * 20, root / "text_tok", vocab_size=300)
    llm = build_llama(root / "llama", text_tok, "tiny", seed=0)
    MedITokAR.from_pretrained(llm, tokenizer=tiny_weights).save_pretrained(root / "model")
    return root / "model"


def test_vqa_with_the_transformers_path_scores_its_own_predictions(tmp_path, ar_dir, one_per_modality):
    image = str(one_per_modality.parent / json.loads(one_per_modality.read_text().splitlines()[0])["path"])
    questions = [
        {"qid": 1, "image": image, "question": "Is there a fracture?", "answer": "yes", "answer_type": "CLOSED"},
        {"qid": 2, "image": image, "question": "What organ is shown?", "answer": "lung", "answer_type": "OPEN"},
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "vqa"
    # The images live in the samples folder, not beside the question file: name that root (paths are confined to it).
    args = ["vqa", "--questions", str(qfile), "--image-root", str(one_per_modality.parent), "--model-path", str(ar_dir)]
    assert main([*args, "-o", str(out), "--quiet"]) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in preds] == ["1", "2"] and all(isinstance(p["text"], str) for p in preds)
    # The report's numbers, worked out here from the model's own answers with the metric definitions written out
    # (not with vqa.score): lower case, punctuation to spaces, articles dropped; closed yes/no: the first yes/no word;
    # open: share of the reference's words in the answer, and exact match.
    punctuation = "[" + re.escape(string.punctuation) + "]"
    words = [
        [w for w in re.sub(punctuation, " ", p["text"].lower()).split() if w not in ("a", "an", "the")] for p in preds
    ]
    first_yes_no = next((w for w in words[0] if w in ("yes", "no")), None)
    expected = {"n": 2, "n_closed": 1, "n_open": 1, "n_choice": 0, "closed_accuracy": float(first_yes_no == "yes"),
                "open_recall": float("lung" in words[1]), "open_exact": float(words[1] == ["lung"]),
                "choice_accuracy": None}  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["metrics"]["overall"] == pytest.approx(expected)


def test_gen_with_the_transformers_path(tmp_path, ar_dir, one_per_modality, inception):
    real = tmp_path / "real.jsonl"
    rows = [json.loads(x) for x in one_per_modality.read_text().splitlines()][:2]
    for r in rows:
        r["path"] = str(one_per_modality.parent / r["path"])
    real.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gen"
    args = [
        "gen",
        "--real",
        str(real),
        "--model-path",
        str(ar_dir),
        "--n-per-group",
        "2",
        "--size",
        "32",
        "-o",
        str(out),
    ]
    assert main([*args, "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["overall"]["n_generated"] == 4
    assert set(metrics["per_group"]) == {r["modality"] for r in rows}


def test_missing_ar_model_fails_before_work(tmp_path):
    with pytest.raises(vqa.EvalError, match="AR model not found"):
        vqa.load_ar_model(str(tmp_path / "absent"))
