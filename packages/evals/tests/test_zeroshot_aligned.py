"""`meditok-eval zeroshot` with a stage-2 release: the exported text adapters (text_alignment.*) map a BiomedCLIP-layout
text tower (hf_bert: a tiny random BERT + open_clip checkpoint, loaded by the training code) into the tokenizer's
embedding space. The training checkpoint is built here in DeepSpeed's ZeRO-0 layout (this session has no DeepSpeed;
the tokenizer-train tests export a real stage-2 run), exported with `meditok export`, and the class logits are
recomputed by hand with plain LayerNorm/Linear modules holding the adapter tensors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require
from torch import nn

from meditok.evals.cli import main

CLASSES = sorted(["ct", "mri", "xray", "ultrasound", "pathology", "fundus", "dermoscopy"])  # the CLI's order
SCALE = 20.0


@pytest.fixture(scope="module")
def hf_tower(tmp_path_factory) -> dict:
    require(__import__("importlib").util.find_spec("transformers") is not None, "transformers is not installed")
    from meditok.tokenizer.training.testing import make_hf_text_standin

    return make_hf_text_standin(tmp_path_factory.mktemp("hf") / "biomedclip-text")


@pytest.fixture(scope="module")
def release(tmp_path_factory, hf_tower) -> dict:
    """A stage-2 training checkpoint (tiny core + random, non-trivial adapters) -> `meditok export` -> release."""
    from meditok.tokenizer import MedITok
    from meditok.tokenizer.cli import main as meditok_main

    root = tmp_path_factory.mktemp("stage2")
    core = MedITok.from_config("tiny", seed=0)
    with torch.no_grad():
        core.logit_scale.fill_(math.log(SCALE))
    g = torch.Generator().manual_seed(7)
    d, e = hf_tower["output_dim"], core.config.embed_dim
    adapters = {
        "text_fc_norm.weight": 1 + 0.2 * torch.randn(d, generator=g),
        "text_fc_norm.bias": 0.1 * torch.randn(d, generator=g),
        "text_projection.weight": 0.2 * torch.randn(e, d, generator=g),
        "text_projection.bias": 0.05 * torch.randn(e, generator=g),
    }
    ckpt = root / "run" / "checkpoints" / "step-00000010"
    (ckpt / "generator").mkdir(parents=True)
    module = {f"core.{k}": v for k, v in core.state_dict().items()} | adapters
    torch.save({"module": module}, ckpt / "generator" / "mp_rank_00_model_states.pt")
    teacher = {
        "kind": "text",
        "format": "hf_bert",
        "path": hf_tower["folder"],
        "checkpoint": hf_tower["checkpoint"],
        "context_length": 24,
        "weight": 1.0,
    }
    state = {
        "step": 10,
        "stage": 2,
        "world_size": 1,
        "model_config": core.config.to_dict(),
        "config": {"teacher": teacher},
    }
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    (ckpt.parent / "latest").write_text(ckpt.name)
    out = root / "release"
    assert meditok_main(["export", str(ckpt.parent), str(out)]) == 0
    return {"dir": out, "adapters": adapters, "teacher": teacher}


def _run(tmp_path, manifest, weights, *extra, name="zs"):
    out = tmp_path / name
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({c: [f"A {c} image.", f"a medical {c} scan"] for c in CLASSES}))
    args = ["zeroshot", "--data", str(manifest), "--weights", str(weights), "--prompts", str(prompts)]
    return main([*args, "--size", "64", "-o", str(out), "--quiet", *extra]), out


def _by_hand(release, hf_tower, manifest) -> tuple[torch.Tensor, np.ndarray]:
    """Cosine logits [N, 7] with the tower, plain nn.LayerNorm/nn.Linear holding the adapter tensors, and the
    release's embed_image; and the integer targets."""
    from meditok.evals.data import load_eval_set
    from meditok.tokenizer import MedITok
    from meditok.tokenizer.auxiliary import load_text_tower

    t = release["teacher"]
    tower = load_text_tower(t["path"], "hf_bert", checkpoint=t["checkpoint"], context_length=t["context_length"])
    norm, proj = nn.LayerNorm(hf_tower["output_dim"]), nn.Linear(hf_tower["output_dim"], 64)
    a = release["adapters"]
    norm.load_state_dict({"weight": a["text_fc_norm.weight"], "bias": a["text_fc_norm.bias"]})
    proj.load_state_dict({"weight": a["text_projection.weight"], "bias": a["text_projection.bias"]})
    data = load_eval_set(manifest, size=64, progress=False)
    with torch.no_grad():
        rows = []
        for c in CLASSES:
            prompts = [f"A {c} image.", f"a medical {c} scan"]
            z = F.normalize(proj(norm(tower.encode_text(prompts))), dim=-1)
            rows.append(F.normalize(z.mean(0), dim=-1))
        img = MedITok.from_pretrained(release["dir"]).embed_image(data.images)
    return img @ torch.stack(rows).T, np.array([CLASSES.index(m) for m in data.labels])


def test_release_carries_the_alignment_and_still_loads(release, hf_tower):
    from safetensors.torch import load_file

    from meditok.tokenizer import MedITok

    d = release["dir"]
    desc = json.loads((d / "text_alignment.json").read_text())
    assert desc["text_tower"]["format"] == "hf_bert" and desc["text_tower"]["path"] == hf_tower["folder"]
    assert desc["text_tower"]["context_length"] == 24 and desc["text_tower"]["output_dim"] == hf_tower["output_dim"]
    assert desc["logit_scale"] == pytest.approx(SCALE) and desc["embed_dim"] == 64
    saved = load_file(d / "text_alignment.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in release["adapters"].items())
    assert MedITok.from_pretrained(d).config.name == "tiny"
    assert not any(k.startswith("text_") for k in load_file(d / "model.safetensors"))


def test_zeroshot_with_the_exported_adapters(tmp_path, three_per_modality, release, hf_tower):
    from sklearn.metrics import roc_auc_score

    rc, out = _run(tmp_path, three_per_modality, release["dir"])  # tower path/format/checkpoint: as recorded
    assert rc == 0
    payload = json.loads((out / "metrics.json").read_text())
    m = payload["metrics"]
    logits, targets = _by_hand(release, hf_tower, three_per_modality)
    got = torch.tensor(m["logits"])
    torch.testing.assert_close(got, logits.float(), rtol=1e-4, atol=1e-5)
    # The random tower's class embeddings are close to each other (cosines differ by ~1e-4 along a row): compare the
    # differences between classes too, at a tolerance well below that spread.
    spread = (logits - logits.mean(1, keepdim=True)).float()
    assert spread.abs().max() > 1e-4
    torch.testing.assert_close(got - got.mean(1, keepdim=True), spread, rtol=0, atol=2e-6)
    assert m["targets"] == targets.tolist()
    assert m["logit_scale"] == pytest.approx(SCALE)
    assert m["accuracy"] == pytest.approx((logits.argmax(1).numpy() == targets).mean())
    scores = torch.softmax(SCALE * logits.double(), dim=1).numpy()
    assert m["auc"] == pytest.approx(roc_auc_score(targets, scores, multi_class="ovr"), abs=1e-6)
    assert m["text_tower"]["fmt"] == "hf_bert" and m["text_tower"]["context_length"] == 24
    assert m["text_alignment"]["path"] == str(release["dir"])
    report = (out / "report.md").read_text()
    assert "Text alignment" in report and "LayerNorm(48)" in report and f"softmax({SCALE:g} x cosine)" in report
    assert all(f in payload["figures"] for f in ("confusion.png", "accuracy_per_class.png"))

    # --text-alignment DIR (e.g. a release copied without the files) gives the same numbers
    bare = tmp_path / "bare"
    shutil.copytree(release["dir"], bare)
    for name in ("text_alignment.json", "text_alignment.safetensors"):
        (bare / name).unlink()
    rc, out2 = _run(
        tmp_path,
        three_per_modality,
        bare,
        "--text-alignment",
        str(release["dir"]),
        "--text-tower",
        hf_tower["folder"],
        "--text-format",
        "hf_bert",
        "--context-length",
        "24",
        name="zs2",
    )
    assert rc == 0
    assert json.loads((out2 / "metrics.json").read_text())["metrics"]["logits"] == m["logits"]


def test_without_the_adapters_the_widths_disagree(tmp_path, three_per_modality, release, hf_tower, capsys):
    rc, out = _run(
        tmp_path,
        three_per_modality,
        release["dir"],
        "--text-alignment",
        "none",
        "--text-tower",
        hf_tower["folder"],
        "--text-format",
        "hf_bert",
        "--context-length",
        "24",
    )
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "48-d" in err and "64-d" in err and "text_alignment" in err


@pytest.mark.parametrize("case", ["moved_tower", "alignment_missing", "wrong_width", "bad_tower_file"])
def test_alignment_problems_fail_before_work(tmp_path, three_per_modality, release, hf_tower, case, capsys):
    weights = tmp_path / "release"
    shutil.copytree(release["dir"], weights)
    extra: list[str] = []
    desc = json.loads((weights / "text_alignment.json").read_text())
    if case == "moved_tower":
        desc["text_tower"]["path"] = str(tmp_path / "elsewhere")
        (weights / "text_alignment.json").write_text(json.dumps(desc))
        expect = "recorded in text_alignment.json"
    elif case == "alignment_missing":
        extra, expect = ["--text-alignment", str(tmp_path / "nowhere")], "--text-alignment not found"
    elif case == "wrong_width":
        desc["adapters"]["text_projection"]["out_features"] = 32
        (weights / "text_alignment.json").write_text(json.dumps(desc))
        expect = "does not match text_alignment.json"
    else:
        bad = tmp_path / "tower"
        shutil.copytree(hf_tower["folder"], bad)
        (bad / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint")
        extra, expect = ["--text-tower", str(bad)], "cannot read"
    rc, out = _run(tmp_path, three_per_modality, weights, *extra)
    assert rc == 2 and not out.exists()
    assert expect in capsys.readouterr().err
