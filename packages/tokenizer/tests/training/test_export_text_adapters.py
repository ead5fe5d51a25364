"""Stage 2 -> release -> zero-shot: the export writes the trainable text-side adapters (text_fc_norm LayerNorm +
text_projection Linear) as text_alignment.safetensors/.json next to the tokenizer release, and together with the
release they reproduce the training-time aligned space (the CLIP loss's image and teacher embeddings) exactly.

A tiny stage-2 run (2 steps, BiomedCLIP-layout hf_bert stand-in) is trained for real. `meditok-eval zeroshot` on an
export is tested where meditok-evals is installed: packages/evals/tests/test_zeroshot_aligned.py exports a stage-2
checkpoint it builds and checks the class logits against a by-hand forward of the adapters."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import overrides, run_train, venv_tool

from meditok.tokenizer import MedITok
from meditok.tokenizer.auxiliary import TextAlignmentError, load_text_alignment, load_text_tower
from meditok.tokenizer.training.export import (
    ADAPTER_KEYS,
    GENERATOR_STATES,
    STATE_FILE,
    TEXT_ALIGNMENT_CONFIG,
    TEXT_ALIGNMENT_WEIGHTS,
    export_checkpoint,
)


@pytest.fixture(scope="module")
def stage2(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("s2export")
    result = run_train(
        "tiny-cpu-stage2.yaml",
        overrides(
            assets, out, "run.steps=2", "run.ckpt_every=2", "model.init_from=null", "disc.enabled=false", stage=2
        ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ckpt = out / "checkpoints" / "step-00000002"
    module = torch.load(ckpt / GENERATOR_STATES, map_location="cpu", weights_only=True)["module"]
    return {"out": out, "ckpt": ckpt, "module": module, "release": out / "export"}


def _tower(assets):
    return load_text_tower(assets["hf_bert"], "hf_bert", checkpoint=assets["hf_bert_checkpoint"], context_length=32)


def test_export_writes_the_trained_adapters_and_what_they_need(assets, stage2):
    release, module = stage2["release"], stage2["module"]
    for name in ("config.json", "model.safetensors", TEXT_ALIGNMENT_WEIGHTS, TEXT_ALIGNMENT_CONFIG):
        assert (release / name).is_file(), name
    tensors = load_file(release / TEXT_ALIGNMENT_WEIGHTS)
    assert sorted(tensors) == sorted(ADAPTER_KEYS)
    for k in ADAPTER_KEYS:
        assert tensors[k].dtype == torch.float32 and torch.equal(tensors[k], module[k].float()), k
    # trained, not the initial values (LayerNorm ones/zeros, zero projection bias)
    assert not torch.equal(tensors["text_fc_norm.weight"], torch.ones(assets["hf_bert_dim"]))
    assert tensors["text_projection.bias"].abs().max() > 0
    desc = json.loads((release / TEXT_ALIGNMENT_CONFIG).read_text())
    assert desc["text_tower"] == {
        "format": "hf_bert",
        "path": assets["hf_bert"],
        "checkpoint": assets["hf_bert_checkpoint"],
        "context_length": 32,
        "output_dim": assets["hf_bert_dim"],
    }
    assert desc["adapters"]["text_projection"] == {"type": "Linear", "in_features": 48, "out_features": 64}
    assert desc["adapters"]["text_fc_norm"]["dim"] == 48 and desc["embed_dim"] == 64
    assert desc["logit_scale"] == pytest.approx(min(100.0, math.exp(float(module["core.logit_scale"]))))
    assert desc["source"]["stage"] == 2 and desc["source"]["step"] == 2

    # The release itself is unchanged: the tokenizer loads it and its weights hold no adapter.
    core = load_file(release / "model.safetensors")
    assert not any(k.startswith("text_") for k in core)
    tok = MedITok.from_pretrained(release)
    assert tok.config.name == "tiny"
    assert torch.equal(tok.projection.weight, module["core.projection.weight"].float())

    # `meditok export` (the CLI, no DeepSpeed) writes the same files.
    again = stage2["out"] / "export-cli"
    result = subprocess.run(
        [venv_tool("meditok"), "export", str(stage2["out"] / "checkpoints"), str(again)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for name in ("model.safetensors", TEXT_ALIGNMENT_WEIGHTS):
        a, b = load_file(release / name), load_file(again / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((again / TEXT_ALIGNMENT_CONFIG).read_text())["text_tower"] == desc["text_tower"]


def test_release_plus_alignment_reproduce_the_training_space(assets, stage2):
    """MedITok.embed_image and the exported adapters give the CLIP loss's `embedding` and `teacher_embedding`."""
    from meditok.tokenizer.training.trainer import GeneratorWrapper

    release = stage2["release"]
    tok = MedITok.from_pretrained(release)
    wrapper = GeneratorWrapper(MedITok.from_config("tiny", seed=1), assets["hf_bert_dim"])
    wrapper.load_state_dict(stage2["module"], strict=True)
    wrapper.eval()
    tower = _tower(assets)
    alignment = load_text_alignment(release)
    assert alignment.input_dim == 48 and alignment.embed_dim == 64
    captions = ["A chest x-ray image.", "An axial CT slice of the liver.", "A brain MRI scan.", "A fundus image."]
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        feats = tower.encode_text(captions).float()
        ref = wrapper(x, feats)
        img, txt = tok.embed_image(x), alignment(feats)
    torch.testing.assert_close(img, ref["embedding"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(txt, ref["teacher_embedding"], rtol=1e-5, atol=1e-6)
    scale = min(100.0, float(ref["logit_scale"]))
    torch.testing.assert_close(
        alignment.logit_scale * img @ txt.T, scale * ref["embedding"] @ ref["teacher_embedding"].T, rtol=1e-4, atol=1e-4
    )


# ------------------------------------------------------------------ cheap checks on hand-built checkpoints


def _fake_checkpoint(root, teacher: dict, adapters: dict) -> object:
    core = MedITok.from_config("tiny", seed=0)
    module = {f"core.{k}": v for k, v in core.state_dict().items()} | adapters
    ckpt = root / "checkpoints" / "step-00000003"
    (ckpt / "generator").mkdir(parents=True)
    torch.save({"module": module}, ckpt / GENERATOR_STATES)
    state = {
        "step": 3,
        "stage": 1,
        "world_size": 1,
        "model_config": core.config.to_dict(),
        "config": {"teacher": teacher},
    }
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    return ckpt


def test_vision_teacher_runs_export_no_alignment_and_clear_stale_files(tmp_path):
    adapters = {
        "text_fc_norm.weight": torch.ones(16),
        "text_fc_norm.bias": torch.zeros(16),
        "text_projection.weight": torch.zeros(64, 16),
        "text_projection.bias": torch.zeros(64),
    }
    release = tmp_path / "release"
    text = _fake_checkpoint(tmp_path / "a", {"kind": "text", "format": "meditok", "path": "t"}, adapters)
    export_checkpoint(text, release)
    assert load_text_alignment(release).input_dim == 16
    vision = _fake_checkpoint(tmp_path / "b", {"kind": "vision", "format": "meditok", "path": "v"}, adapters)
    export_checkpoint(vision, release)
    assert not (release / TEXT_ALIGNMENT_CONFIG).exists() and not (release / TEXT_ALIGNMENT_WEIGHTS).exists()
    MedITok.from_pretrained(release)
    with pytest.raises(TextAlignmentError, match="no text_alignment.json"):
        load_text_alignment(release)

    broken = _fake_checkpoint(tmp_path / "c", {"kind": "text"}, {})
    with pytest.raises(KeyError, match="without the adapters"):
        export_checkpoint(broken, tmp_path / "r2")


def test_load_text_alignment_checks_the_files(tmp_path):
    adapters = {
        "text_fc_norm.weight": torch.ones(16),
        "text_fc_norm.bias": torch.zeros(16),
        "text_projection.weight": torch.randn(64, 16),
        "text_projection.bias": torch.zeros(64),
    }
    release = export_checkpoint(_fake_checkpoint(tmp_path, {"kind": "text", "path": "t"}, adapters), tmp_path / "r")
    desc = json.loads((release / TEXT_ALIGNMENT_CONFIG).read_text())
    desc["adapters"]["text_projection"]["in_features"] = desc["adapters"]["text_fc_norm"]["dim"] = 32
    (release / TEXT_ALIGNMENT_CONFIG).write_text(json.dumps(desc))
    with pytest.raises(TextAlignmentError, match="does not match text_alignment.json"):
        load_text_alignment(release)
    (release / TEXT_ALIGNMENT_CONFIG).write_text("{broken")
    with pytest.raises(TextAlignmentError, match="not a text-alignment description"):
        load_text_alignment(release / TEXT_ALIGNMENT_CONFIG)
    (release / TEXT_ALIGNMENT_WEIGHTS).unlink()
    (release / TEXT_ALIGNMENT_CONFIG).write_text(json.dumps({**desc, "adapters": {**desc["adapters"]}}))
    with pytest.raises(TextAlignmentError, match="missing"):
        load_text_alignment(release)
    MedITok.from_pretrained(release)  # what the tokenizer reads is untouched by all this
