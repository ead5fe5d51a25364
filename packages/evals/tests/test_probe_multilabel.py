"""Multi-label linear probe (one-vs-rest logistic regression): a ChestMNIST-style NPZ (labels [N, C] of 0/1) built
from real PH² dermoscopy patches, and a manifest whose label field holds lists of findings. Per-class AUC / AP and
their means are recomputed with scikit-learn's roc_auc_score / average_precision_score, and the scores of the
pixel baseline are reproduced by fitting one binary LogisticRegression per class by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meditok.evals.cli import main


def _multilabel_npz(path: Path, per_group: int = 30) -> tuple[Path, np.ndarray]:
    """Labels: 0 = nonSimilar patch, 1 = brighter than the median, 2 = redder than the median, 3 = positive only in
    a few training images (undefined AUC on the test split)."""
    from PIL import Image

    from meditok.data.samples import dermoscopy_patches

    patches = dermoscopy_patches()
    images, group = [], []
    for g, name in enumerate(("Similar", "nonSimilar")):
        files = [p for p in patches if p.parent.name == name][: per_group * 2]
        kept = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        kept = [im for im in kept if im.shape == (32, 32, 3)][:per_group]
        images += kept
        group += [g] * len(kept)
    images = np.stack(images)
    order = np.random.default_rng(0).permutation(len(images))
    images, group = images[order], np.array(group)[order]
    brightness = images.reshape(len(images), -1).mean(1)
    redness = images[..., 0].mean((1, 2)) - images[..., 1:].mean((1, 2, 3))
    labels = np.stack(
        [group, brightness > np.median(brightness), redness > np.median(redness), np.zeros(len(images))], 1
    ).astype(np.uint8)
    cut = int(0.7 * len(images))
    labels[:4, 3] = 1  # a rare finding, only in the training split
    np.savez(
        path,
        train_images=images[:cut],
        train_labels=labels[:cut],
        test_images=images[cut:],
        test_labels=labels[cut:],
    )
    return path, labels


def _findings_manifest(three_per_modality: Path, path: Path) -> Path:
    color = {"pathology", "fundus", "dermoscopy"}
    radiology = {"ct", "mri", "xray"}
    rows = []
    for i, line in enumerate(three_per_modality.read_text().splitlines()):
        r = json.loads(line)
        m = r["modality"]
        findings = (["color"] if m in color else ["gray"]) + (["radiology"] if m in radiology else [])
        r["findings"] = findings if i % 5 else []  # some images without any finding
        r["path"] = str(three_per_modality.parent / r["path"])
        rows.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_multilabel_probe_end_to_end(tmp_path, three_per_modality, tiny_weights):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from meditok.evals.adapters import DownsampleBaseline
    from meditok.evals.data import load_npz

    npz, labels = _multilabel_npz(tmp_path / "dermmulti.npz")
    manifest = _findings_manifest(three_per_modality, tmp_path / "findings.jsonl")
    out = tmp_path / "probe"
    args = ["probe", "--data", str(npz), "--data", str(manifest), "--label-key", "findings"]
    args += ["--weights", str(tiny_weights), "--feature", "both", "--size", "32", "-o", str(out), "--quiet"]
    assert main(args) == 0
    payload = json.loads((out / "metrics.json").read_text())
    results = payload["metrics"]["datasets"]
    assert set(results) == {"dermmulti", "findings"}

    derm = results["dermmulti"]
    cut = int(0.7 * len(labels))
    assert derm["task"] == "multi-label" and derm["classes"] == ["0", "1", "2", "3"]
    assert derm["n_train"] == cut and derm["n_test"] == len(labels) - cut
    assert derm["positives_test"] == labels[cut:].sum(0).tolist() and derm["positives_test"][3] == 0
    assert len(derm["adapters"]) == 3  # features, embed, baseline
    for name, r in derm["adapters"].items():
        scores, targets = np.array(r["scores"]), np.array(r["targets"])
        assert scores.shape == targets.shape == (len(labels) - cut, 4)
        assert (targets == labels[cut:]).all()
        for c in range(3):
            assert r["per_class_auc"][c] == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]), abs=1e-6), name
            assert r["per_class_ap"][c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-6)
        assert r["per_class_auc"][3] is None and r["per_class_ap"][3] is None and r["classes_scored"] == 3
        assert r["auc"] == pytest.approx(roc_auc_score(targets[:, :3], scores[:, :3], average="macro"), abs=1e-6)
        assert r["map"] == pytest.approx(
            average_precision_score(targets[:, :3], scores[:, :3], average="macro"), abs=1e-6
        )
        assert r["accuracy"] == pytest.approx(((scores >= 0.5) == targets).mean())
    # The pixel baseline's features can be rebuilt exactly: one binary logistic regression per class by hand.
    base_name = next(n for n in derm["adapters"] if n.startswith("downsample"))
    data = load_npz(npz, size=32, progress=False)
    feats = DownsampleBaseline(24_576).features(data.images).numpy()  # the bits of MedITok at 256x256
    scaler = StandardScaler().fit(feats[:cut])
    got = np.array(derm["adapters"][base_name]["scores"])
    for c in range(4):
        clf = LogisticRegression(max_iter=3000, random_state=0).fit(scaler.transform(feats[:cut]), labels[:cut, c])
        np.testing.assert_allclose(got[:, c], clf.predict_proba(scaler.transform(feats[cut:]))[:, 1], atol=1e-6)
    # the easy labels (brightness, redness) are learned from the pixels
    assert derm["adapters"][base_name]["per_class_auc"][1] > 0.9

    findings = results["findings"]
    assert findings["task"] == "multi-label" and findings["classes"] == ["color", "gray", "radiology"]
    for r in findings["adapters"].values():
        scores, targets = np.array(r["scores"]), np.array(r["targets"])
        for c, auc in enumerate(r["per_class_auc"]):
            if auc is not None:
                assert auc == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]), abs=1e-6)

    report = (out / "report.md").read_text()
    assert "## Multi-label" in report and "### dermmulti: per class" in report and "| mean |" in report
    for figure in ("auc_per_class_dermmulti.png", "ap_per_class_dermmulti.png", "auc_per_class_findings.png"):
        assert figure in payload["figures"] and (out / figure).stat().st_size > 1000


def test_multilabel_labels_and_errors(tmp_path):
    from meditok.evals.data import CHESTMNIST_NAMES, check_npz, label_matrix, load_npz
    from meditok.evals.errors import EvalError

    # 0/1 vectors (as meditok-data writes for ChestMNIST), name lists, separated strings
    m, names = label_matrix([[0, 1, 1], [1, 0, 0]])
    assert names == ["0", "1", "2"] and m.tolist() == [[0, 1, 1], [1, 0, 0]]
    m, names = label_matrix([["edema", "mass"], [], ["mass"]])
    assert names == ["edema", "mass"] and m.tolist() == [[1, 1], [0, 0], [0, 1]]
    m, names = label_matrix(["a;b", "b", ""], sep=";")
    assert names == ["a", "b"] and m.tolist() == [[1, 1], [0, 1], [0, 0]]
    with pytest.raises(EvalError, match="at least 2 classes"):
        label_matrix([["x"], []])

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (6, 28, 28), dtype=np.uint8)
    chest = tmp_path / "chestmnist.npz"
    np.savez(chest, train_images=img, train_labels=rng.integers(0, 2, (6, 14)), test_images=img[:2],
             test_labels=rng.integers(0, 2, (2, 14)))  # fmt: skip
    data = load_npz(chest, size=16, progress=False)
    assert data.multi_label and data.label_names == CHESTMNIST_NAMES and data.label_matrix.shape == (8, 14)
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=img, train_labels=np.full((6, 3), 2), test_images=img, test_labels=np.ones((6, 3)))
    with pytest.raises(EvalError, match="must hold only 0 and 1"):
        check_npz(bad)
    np.savez(bad, train_images=img, train_labels=np.ones((6, 3)), test_images=img, test_labels=np.ones((6, 2)))
    with pytest.raises(EvalError, match="different label widths"):
        check_npz(bad)


def test_multilabel_manifest_problems_fail_before_work(tmp_path, three_per_modality, tiny_weights, capsys):
    rows = [json.loads(x) for x in three_per_modality.read_text().splitlines()]
    for r in rows:
        r["path"] = str(three_per_modality.parent / r["path"])
        r["findings"] = "only-one"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ["probe", "--data", str(bad), "--label-key", "findings", "--multi-label", "--weights", str(tiny_weights)]
    assert main([*args, "-o", str(out), "--quiet"]) == 2
    assert "at least 2 classes" in capsys.readouterr().err and not out.exists()
