"""Every subcommand end to end on the real offline samples with a tiny MedITok saved to disk; the numbers in
metrics.json are re-derived independently; bad inputs fail before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meditok.evals.cli import main

ROOT = Path(__file__).resolve().parents[3]


def _metrics(out: Path) -> dict:
    assert (out / "report.md").exists()
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    payload = json.loads((out / "metrics.json").read_text())
    for name in payload["figures"]:
        assert (out / name).exists() and f"]({name})" in (out / "report.md").read_text()
    return payload["metrics"]


def test_recon_end_to_end(tmp_path, one_per_modality, tiny_weights, standins, inception):
    from skimage.metrics import peak_signal_noise_ratio

    from meditok.evals.adapters import MedITokAdapter
    from meditok.evals.data import load_eval_set
    from meditok.tokenizer.preprocessing import to_uint8

    out = tmp_path / "recon"
    assert (
        main(
            [
                "recon",
                "--data",
                str(one_per_modality),
                "--weights",
                str(tiny_weights),
                "--lpips",
                standins["lpips"],
                "--size",
                "128",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = _metrics(out)
    names = list(m["tokenizers"])
    assert names == ["MedITok-tiny", "downsample 32x32 (same bits)"]
    tiny, base = m["tokenizers"][names[0]], m["tokenizers"][names[1]]
    assert set(tiny["per_modality"]) == {"ct", "mri", "xray", "ultrasound", "pathology", "fundus", "dermoscopy"}
    for r in (tiny, base):
        o = r["overall"]
        assert o["n"] == 7 and o["rfid"] > 0 and o["lpips"] > 0 and 0 < o["ssim"] < 1
    # an untrained tokenizer is far worse than the same-bits baseline
    assert base["overall"]["psnr"] > tiny["overall"]["psnr"] + 5
    # independent recomputation of the per-image PSNR with scikit-image
    data = load_eval_set(one_per_modality, size=128, progress=False)
    tok = MedITokAdapter.from_path(tiny_weights)
    a, b = to_uint8(data.images), to_uint8(tok.decode(tok.encode(data.images)))
    ref = [peak_signal_noise_ratio(a[i], b[i], data_range=255) for i in range(len(a))]
    assert [r["psnr"] for r in tiny["per_image"]] == pytest.approx(ref, abs=1e-3)
    assert tiny["overall"]["psnr"] == pytest.approx(np.mean(ref), abs=1e-3)
    assert "LPIPS" in (out / "report.md").read_text()


def test_codebook_end_to_end(tmp_path, three_per_modality, tiny_weights):
    from meditok.evals.data import load_eval_set
    from meditok.tokenizer import MedITok

    out = tmp_path / "codebook"
    assert (
        main(
            [
                "codebook",
                "--data",
                str(three_per_modality),
                "--weights",
                str(tiny_weights),
                "--size",
                "64",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = _metrics(out)
    data = load_eval_set(three_per_modality, size=64, progress=False)
    codes = MedITok.from_pretrained(tiny_weights).encode(data.images).numpy()
    assert m["tokens_per_codebook"] == codes.shape[0] * codes.shape[2] == len(data) * 16
    for k, s in enumerate(m["per_codebook"]):
        counts = np.bincount(codes[:, k].ravel(), minlength=4096)
        p = counts[counts > 0] / counts.sum()
        assert s["usage_pct"] == pytest.approx((counts > 0).mean() * 100)
        assert s["dead_codes"] == int((counts == 0).sum())
        assert s["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert len(m["running_usage_pct"]) == 8
    assert (out / "codebook_usage.png").exists()


def test_weights_take_hub_names(tmp_path, monkeypatch, three_per_modality, tiny_weights, capsys):
    """--weights org/name reads a Hugging Face cache built on disk, offline: the same report as the local folder."""
    import huggingface_hub.constants as hub_constants

    from meditok.tokenizer.testing import write_hub_cache

    cache = tmp_path / "hub-cache"
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(name, "1" if value is True else value)
        monkeypatch.setattr(hub_constants, name, value)  # read by huggingface_hub at import time
    write_hub_cache(cache, "someone/meditok-tiny", {p.name: p for p in Path(tiny_weights).iterdir()})
    runs = {}
    for weights in (str(tiny_weights), "someone/meditok-tiny"):
        out = tmp_path / weights.replace("/", "_")
        argv = ["codebook", "--data", str(three_per_modality), "--weights", weights, "--size", "64", "-o", str(out)]
        assert main([*argv, "--quiet"]) == 0
        runs[weights] = json.loads((out / "metrics.json").read_text())["metrics"]
    assert runs["someone/meditok-tiny"]["per_codebook"] == runs[str(tiny_weights)]["per_codebook"]
    capsys.readouterr()
    assert (
        main(["codebook", "--data", str(three_per_modality), "--weights", "someone/absent", "-o", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "someone/absent: config.json + model.safetensors is not in the Hugging Face" in err


def _derm_npz(path: Path, per_class: int = 24) -> Path:
    """A MedMNIST-style NPZ from the real PH² dermoscopy patches: label 0 = Similar, 1 = nonSimilar."""
    from PIL import Image

    from meditok.data.samples import dermoscopy_patches

    patches = dermoscopy_patches()
    images, labels = [], []
    for label, group in enumerate(("Similar", "nonSimilar")):
        files = [p for p in patches if p.parent.name == group][:per_class]
        for f in files:
            img = np.asarray(Image.open(f).convert("RGB"))
            if img.shape == (32, 32, 3):
                images.append(img)
                labels.append(label)
    images, labels = np.stack(images), np.array(labels)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    cut = int(0.7 * len(images))
    np.savez(
        path, train_images=images[:cut], train_labels=labels[:cut], test_images=images[cut:], test_labels=labels[cut:]
    )
    return path


def test_probe_end_to_end(tmp_path, three_per_modality, tiny_weights):
    from sklearn.metrics import accuracy_score, roc_auc_score

    npz = _derm_npz(tmp_path / "dermmnist.npz")
    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "--data",
                str(npz),
                "--data",
                str(three_per_modality),
                "--weights",
                str(tiny_weights),
                "--feature",
                "both",
                "--size",
                "32",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert set(m["datasets"]) == {"dermmnist", "three_per_modality"}
    derm = m["datasets"]["dermmnist"]
    assert derm["classes"] == ["0", "1"] and derm["n_test"] == 48 - int(0.7 * 48)
    assert len(derm["adapters"]) == 3  # features, embed, baseline
    for r in derm["adapters"].values():
        scores, targets = np.array(r["scores"]), np.array(r["targets"])
        assert r["accuracy"] == pytest.approx(accuracy_score(targets, scores.argmax(1)))
        assert r["auc"] == pytest.approx(roc_auc_score(targets, scores[:, 1]), abs=1e-6)
    modal = m["datasets"]["three_per_modality"]
    assert len(modal["classes"]) == 7 and modal["n_test"] > 0
    assert np.array(next(iter(modal["adapters"].values()))["confusion"]).sum() == modal["n_test"]


def test_zeroshot_end_to_end(tmp_path, three_per_modality, tiny_weights, standins):
    out = tmp_path / "zeroshot"
    prompts = tmp_path / "prompts.json"
    classes = ["ct", "mri", "xray", "ultrasound", "pathology", "fundus", "dermoscopy"]
    prompts.write_text(json.dumps({c: [f"A {c} image.", f"a medical {c} scan"] for c in classes}))
    assert (
        main(
            [
                "zeroshot",
                "--data",
                str(three_per_modality),
                "--weights",
                str(tiny_weights),
                "--text-tower",
                standins["text_tower"],
                "--prompts",
                str(prompts),
                "--size",
                "64",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = _metrics(out)
    logits, targets = np.array(m["logits"]), np.array(m["targets"])
    assert logits.shape == (len(three_per_modality.read_text().splitlines()), 7)
    assert m["accuracy"] == pytest.approx((logits.argmax(1) == targets).mean())
    assert np.abs(logits).max() <= 1.0 + 1e-5  # cosines
    # bad inputs are refused before the images are read
    bad = tmp_path / "bad_prompts.json"
    bad.write_text(json.dumps({"ct": ["A CT image."]}))
    assert (
        main(
            [
                "zeroshot",
                "--data",
                str(three_per_modality),
                "--weights",
                str(tiny_weights),
                "--text-tower",
                standins["text_tower"],
                "--prompts",
                str(bad),
                "-o",
                str(tmp_path / "z2"),
                "--quiet",
            ]
        )
        == 2
    )
    assert not (tmp_path / "z2").exists()


def test_zeroshot_rejects_a_text_tower_of_the_wrong_width(tmp_path, three_per_modality, tiny_weights, capsys):
    from meditok.tokenizer.auxiliary import TextConfig, TextTower, save_aux

    tower = save_aux(TextTower(TextConfig(output_dim=32)), tmp_path / "tower32")
    assert (
        main(
            [
                "zeroshot",
                "--data",
                str(three_per_modality),
                "--weights",
                str(tiny_weights),
                "--text-tower",
                str(tower),
                "-o",
                str(tmp_path / "z"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "32-d" in capsys.readouterr().err


def test_gen_end_to_end(tmp_path, one_per_modality, samples_dir, inception):
    """'Generated' = the real images themselves for two groups: FID ~0, precision = recall = 1."""
    from meditok.data import Preprocess, load_row, read_manifest
    from meditok.tokenizer.preprocessing import to_pil

    rows = [r for r in read_manifest(samples_dir / "manifest.jsonl") if r.modality in ("dermoscopy", "mri")]
    rows = [r for r in rows if r.modality == "dermoscopy"][:3] + [r for r in rows if r.modality == "mri"][:3]
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({**r.to_dict(), "path": r.path}) + "\n" for r in rows))
    gen_dir = tmp_path / "generated"
    for i, r in enumerate(rows):
        (gen_dir / r.modality).mkdir(parents=True, exist_ok=True)
        to_pil(Preprocess(size=64)(load_row(r)).unsqueeze(0))[0].save(gen_dir / r.modality / f"{i}.png")
    out = tmp_path / "gen"
    assert (
        main(["gen", "--real", str(real), "--generated", str(gen_dir), "--size", "64", "-o", str(out), "--quiet"]) == 0
    )
    m = _metrics(out)
    assert set(m["per_group"]) == {"dermoscopy", "mri"}
    for r in [*m["per_group"].values(), m["overall"]]:
        assert r["fid"] == pytest.approx(0.0, abs=1e-2)
        assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert (out / "samples_0.png").exists()


def test_gen_with_a_callable_generator(tmp_path, one_per_modality, inception, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("fake_generator")
    mod.generate = lambda group, n, seed: (
        torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    )
    monkeypatch.setitem(sys.modules, "fake_generator", mod)
    real = tmp_path / "real.jsonl"
    rows = [json.loads(x) for x in one_per_modality.read_text().splitlines()][:2]
    for r in rows:
        r["path"] = str(one_per_modality.parent / r["path"])
    real.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gen_fn"
    assert (
        main(
            [
                "gen",
                "--real",
                str(real),
                "--generator",
                "fake_generator:generate",
                "--n-per-group",
                "3",
                "--size",
                "64",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert m["overall"]["n_generated"] == 6 and m["overall"]["fid"] > 10  # noise is far from real images


def test_bench_end_to_end(tmp_path, tiny_weights):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--weights",
                str(tiny_weights),
                "--batch-sizes",
                "1",
                "2",
                "--size",
                "64",
                "--repeats",
                "1",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert [r["batch"] for r in m["rows"]] == [1, 2]
    assert all(r["encode_img_s"] > 0 and r["decode_img_s"] > 0 for r in m["rows"])
    assert m["config"] == "tiny" and m["memory"]["peak_rss_gib"] > 0


@pytest.mark.parametrize(
    "case",
    ["weights", "manifest_missing", "manifest_malformed", "image_missing", "lpips", "inception", "npz", "bench"],
)
def test_bad_inputs_fail_before_work(tmp_path, one_per_modality, tiny_weights, case, capsys, monkeypatch):
    out = tmp_path / "out"
    data = str(one_per_modality)
    args = ["recon", "--data", data, "--weights", str(tiny_weights), "-o", str(out), "--quiet"]
    expect = ""
    if case == "weights":
        args[4], expect = str(tmp_path / "nope.safetensors"), "weights not found"
    elif case == "manifest_missing":
        args[2], expect = str(tmp_path / "nope.jsonl"), "manifest not found"
    elif case == "manifest_malformed":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"path": "a.png", "modality": "ct"}\n{broken\n')
        args[2], expect = str(bad), "malformed manifest"
    elif case == "image_missing":
        bad = tmp_path / "missing.jsonl"
        bad.write_text(json.dumps({"path": str(tmp_path / "gone.dcm"), "modality": "ct"}) + "\n")
        args[2], expect = str(bad), "missing"
    elif case == "lpips":
        args += ["--lpips", str(tmp_path / "vgg.pth")]
        expect = "LPIPS weights not found"
    elif case == "inception":
        args += ["--inception", str(tmp_path / "inception.pt")]
        expect = "Inception weights not found"
    elif case == "npz":
        bad = tmp_path / "x.npz"
        np.savez(bad, train_images=np.zeros((2, 8, 8), np.uint8))
        args = ["probe", "--data", str(bad), "--weights", str(tiny_weights), "-o", str(out), "--quiet"]
        expect = "no train_labels"
    elif case == "bench":
        monkeypatch.chdir(tmp_path)  # no checkout needed: the timing code is in meditok.tokenizer.benchmark
        args = ["bench", "--weights", str(tmp_path / "nope.safetensors"), "-o", str(out)]
        expect = "tokenizer weights not found"
    assert main(args) == 2
    assert expect in capsys.readouterr().err
    assert not out.exists()  # nothing was written: the check happened before any work
