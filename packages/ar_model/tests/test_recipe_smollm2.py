"""The SmolLM2 recipe (packages/ar_model/recipes/smollm2) end to end at its reduced size (`--quick`): every stage runs
as the user runs it, the split keeps files on one side, the artefacts load, and fine-tuning lowers the loss of the
training records (measured here with the models, not read from the trainer's log). The full-size numbers are in
BENCHMARKS.md ("SmolLM2 recipe"), from the benchmark run, not from this test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def recipe_run(smollm2_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "run"
    done = subprocess.run([sys.executable, str(RECIPE / "recipe.py"), "--out", str(out), "--quick", "--base",
                           str(smollm2_dir)], capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _training_records(run: Path, base: Path) -> list[dict]:
    """The recipe's training records as `meditok-ar train` reads them (ar.yaml, the run's codes and records)."""
    from meditok.ar.train import build_records, load_config

    overrides = [f"model.base={base}", f"model.out={run / 'ar'}", f"data.codes={run / 'codes'}",
                 f"data.records={run / 'split' / 'records.jsonl'}"]  # fmt: skip
    cfg = load_config(RECIPE / "ar.yaml", overrides)
    return build_records(cfg.data)


def _mean_record_loss(model, records: list[dict]) -> float:
    """Mean loss of every training record (no condition dropout), one record at a time."""
    from meditok.ar.sequences import RecordSampler, collate

    sampler = RecordSampler(model.builder, records, cond_dropout=0.0)
    losses = []
    module = model.training_module().eval()  # the LLM (flat), or the LLM with the compact adapter and depth head
    for record in records:
        batch = collate([sampler.build(record)], model.builder.pad, 512)
        with torch.no_grad():
            losses.append(float(module(**batch).loss))
    return sum(losses) / len(losses)


def test_the_split_keeps_every_file_on_one_side_and_every_modality_on_both(recipe_run):
    train = _read_jsonl(recipe_run / "split" / "train.jsonl")
    held_out = _read_jsonl(recipe_run / "split" / "heldout.jsonl")
    assert not {r["path"] for r in train} & {r["path"] for r in held_out}
    assert {r["modality"] for r in train} == {r["modality"] for r in held_out} >= {"ct", "mri", "xray", "fundus"}
    records = _read_jsonl(recipe_run / "split" / "records.jsonl")
    named = {r["image"] for r in records}
    assert {n.split("@aug")[0] for n in named} <= {_key(r) for r in train}  # no held-out image is trained on
    assert any("@aug" in n for n in named)  # the questions also cycle over the augmented views (--augment)
    kinds = {"understanding" if "conversations" in r else r["type"] for r in records}
    assert kinds == {"understanding", "generation"}


def _key(row: dict) -> str:
    from meditok.data import ManifestRow

    return ManifestRow.from_dict(row).key


def test_the_artefacts_load_and_fine_tuning_lowers_the_training_loss(recipe_run, smollm2_dir):
    from meditok.ar.codes import load_code_table
    from meditok.ar.model import MedITokAR
    from meditok.ar.pretokenize import augmented_key
    from meditok.tokenizer import MedITok

    tokenizer = MedITok.from_pretrained(recipe_run / "tokenizer")
    assert tokenizer.image_input.size == 32  # the recipe's --quick side, recorded by `meditok export --image-size`
    table = load_code_table(recipe_run / "codes")
    rows = _read_jsonl(recipe_run / "split" / "all.jsonl")  # each image and its --quick augmented view
    assert set(table) == {augmented_key(_key(r), view) for r in rows for view in (0, 1)}
    assert all(tuple(entry["grid"]) == (2, 2) for entry in table.values())

    merged = MedITokAR.from_pretrained(recipe_run / "merged")
    extended = MedITokAR.from_pretrained(recipe_run / "ar" / "base")
    # SmolLM2's 49,152 text ids, then <image> <boi> <eoi>, 2 x 64 size tokens and 8 x 4096 codes (README's table).
    assert (merged.layout.text_vocab_size, merged.layout.vocab_size) == (49152, 49152 + 3 + 2 * 64 + 8 * 4096)
    # The chat format is the base's own (ChatML), as the test of issue 13.2 requires of every SmolLM2 sequence.
    prompt = merged.builder.question_prompt(next(iter(table.values()))["codes"], "Q", (2, 2))
    assert merged.text_tokenizer.decode(prompt[:1]) == "<|im_start|>"  # the base's own ChatML (issue 13.2)

    records = _training_records(recipe_run, smollm2_dir)
    before, after = _mean_record_loss(extended, records), _mean_record_loss(merged, records)
    assert after < 0.8 * before, (before, after)

    held_out = _read_jsonl(recipe_run / "split" / "heldout.jsonl")[0]
    entry = table[_key(held_out)]
    assert isinstance(merged.answer(entry["codes"], "What is this?", grid=(2, 2), max_new_tokens=4), str)
    picture = merged.generate_image("Generate a CT image.", size=32, seed=0)
    assert picture.size == (32, 32)


def test_the_results_hold_every_measurement_the_benchmark_reports(recipe_run):
    from PIL import Image

    results = json.loads((recipe_run / "results.json").read_text())
    u, lang, g = results["understanding"], results["language"], results["generation"]
    assert 0 <= u["accuracy"] <= 1 and u["n"] == sum(v["n"] for v in u["per_modality"].values())
    assert u["chance"] == pytest.approx(1 / 7)
    assert lang["base_perplexity"] > 1 and lang["merged_perplexity"] > 1
    assert lang["merged_perplexity_full_vocab"] >= lang["merged_perplexity"]  # more ids in the softmax, never less
    assert [a["question"] for a in lang["answers"]] and all(a["base"] for a in lang["answers"])
    assert 0 <= g["prompted_modality_share_cfg1"] <= 1 and 0 <= g["prompted_modality_share_cfg3"] <= 1
    cost = json.loads((recipe_run / "cost.json").read_text())
    assert {"samples", "split", "tokenizer", "export", "pretokenize", "train", "merge"} <= set(cost)
    assert all(c["seconds"] > 0 and c["peak_rss_mb"] > 0 for c in cost.values())
    grid = Image.open(recipe_run / "generation_grid.png")
    modalities = len({r["modality"] for r in _read_jsonl(recipe_run / "split" / "train.jsonl")})
    assert modalities == 7 and grid.height == 18 + modalities * 64  # a row per modality prompt, 32 px shown at 2x
    assert "results" in (recipe_run / "results.md").read_text()


@pytest.fixture(scope="module")
def compact_run(recipe_run, smollm2_dir) -> Path:
    """The same quick run with the compact layout: only its train / merge / evaluate stages run (the rest is shared)."""
    done = subprocess.run([sys.executable, str(RECIPE / "recipe.py"), "--out", str(recipe_run), "--quick", "--base",
                           str(smollm2_dir), "--layout", "compact"], capture_output=True, text=True,
                          timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[tokenizer] done already" in done.stdout and "[pretokenize] done already" in done.stdout
    return recipe_run


def test_the_compact_layout_variant_trains_and_is_measured_beside_the_flat_one(compact_run, smollm2_dir):
    from meditok.ar.codes import load_code_table
    from meditok.ar.model import MedITokAR

    merged = MedITokAR.from_pretrained(compact_run / "merged-compact-sum")
    extended = MedITokAR.from_pretrained(compact_run / "ar-compact-sum" / "base")
    # compact: <image> <boi> <eoi>, 2 x 64 size tokens and one position token after SmolLM2's 49,152 text ids
    assert merged.layout.version == 2 and merged.layout.vocab_size == 49152 + 3 + 2 * 64 + 1
    assert merged.compact_modules is not None and merged.compact_modules.config.input_adapter == "sum"
    records = _training_records(compact_run, smollm2_dir)
    before, after = _mean_record_loss(extended, records), _mean_record_loss(merged, records)
    assert after < 0.8 * before, (before, after)
    table = load_code_table(compact_run / "codes")
    entry = table[_key(_read_jsonl(compact_run / "split" / "heldout.jsonl")[0])]
    assert isinstance(merged.answer(entry["codes"], "What is this?", grid=(2, 2), max_new_tokens=4), str)
    results = json.loads((compact_run / "results-compact-sum.json").read_text())
    flat = json.loads((compact_run / "results.json").read_text())
    assert 0 <= results["understanding"]["accuracy"] <= 1
    assert results["understanding"]["n"] == flat["understanding"]["n"]  # the same held-out images for both layouts
    cost = json.loads((compact_run / "cost.json").read_text())
    assert {"train", "train-compact-sum", "evaluate-compact-sum"} <= set(cost)
    assert (compact_run / "generation_grid-compact-sum.png").is_file()
