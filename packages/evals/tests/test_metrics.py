"""The maths against independent computations (scikit-image, scipy, scikit-learn, numpy)."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import scipy.linalg
import torch

import meditok.evals
from meditok.evals.adapters import DownsampleBaseline, MedITokAdapter
from meditok.evals.metrics import (
    classification_metrics,
    code_histogram,
    codebook_stats,
    fid_from_features,
    frechet_distance,
    precision_recall,
    psnr_ssim,
)


def test_version_matches_distribution_metadata():
    assert meditok.evals.__version__ == importlib.metadata.version("meditok-evals") == "0.1.0"


@pytest.fixture(scope="module")
def real_pairs(one_per_modality, tiny_weights):
    """Real images (one per modality) and two kinds of distortion: the downsample baseline and a tiny MedITok."""
    from meditok.evals.data import load_eval_set

    data = load_eval_set(one_per_modality, size=128, progress=False)
    base = DownsampleBaseline()
    tok = MedITokAdapter.from_path(tiny_weights)
    return data.images, base.decode(base.encode(data.images)), tok.decode(tok.encode(data.images))


def test_psnr_ssim_equal_scikit_image_on_real_images(real_pairs):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from meditok.tokenizer.preprocessing import to_uint8

    real, *distorted = real_pairs
    assert len(real) == 7
    for fake in distorted:
        psnr, ssim = psnr_ssim(real, fake)
        a, b = to_uint8(real), to_uint8(fake)
        for i in range(len(real)):
            ref_psnr = peak_signal_noise_ratio(a[i], b[i], data_range=255)
            ref_ssim = structural_similarity(
                a[i],
                b[i],
                channel_axis=-1,
                data_range=255,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            assert psnr[i].item() == pytest.approx(ref_psnr, abs=1e-4)
            assert ssim[i].item() == pytest.approx(ref_ssim, abs=2e-4)
    # the two distortions really differ (the test would catch swapped arguments or a constant)
    assert not torch.allclose(psnr_ssim(real, distorted[0])[0], psnr_ssim(real, distorted[1])[0])
    same_psnr, same_ssim = psnr_ssim(real, real)
    assert (same_psnr == 100).all() and torch.allclose(same_ssim, torch.ones(len(real)), atol=5e-4)  # float32


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_matches_scipy_on_known_gaussians():
    rng = np.random.default_rng(0)
    for dim in (1, 3, 16):
        a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
        s1, s2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)
    # closed form for diagonal covariances: |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 3.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(np.zeros(3), np.diag(va), np.array([1.0, 1.0, 1.0]), np.diag(vb)) == pytest.approx(expected)


def test_fid_of_real_set_against_itself_is_zero(inception, one_per_modality):
    from meditok.evals.data import load_eval_set

    data = load_eval_set(one_per_modality, size=128, progress=False)
    feats = inception(data.images[:5])
    assert feats.shape == (5, 2048)
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-3)
    assert fid_from_features(feats[:3], feats[2:]) > 1.0  # different sets are far apart


def test_precision_recall():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(64, 8))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # generated samples collapsed on a few real points: precise (inside the manifold) but with low recall
    collapsed = np.repeat(real[:2], 32, axis=0) + 1e-6
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.2


def test_classification_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
    from sklearn.preprocessing import label_binarize

    rng = np.random.default_rng(2)
    targets = np.repeat(np.arange(4), 15)
    scores = rng.random((60, 4)) + np.eye(4)[targets] * 0.5
    scores /= scores.sum(1, keepdims=True)
    m = classification_metrics(scores, targets, 4)
    assert m["accuracy"] == pytest.approx(accuracy_score(targets, scores.argmax(1)))
    assert m["auc"] == pytest.approx(roc_auc_score(targets, scores, multi_class="ovr", average="macro"), abs=1e-6)
    onehot = label_binarize(targets, classes=range(4))
    assert m["map"] == pytest.approx(average_precision_score(onehot, scores, average="macro"), abs=1e-6)
    assert 0.5 < m["auc"] < 1.0
    # binary: AUC/AP of the positive class
    t2 = rng.integers(0, 2, 40)
    s2 = rng.random(40) * 0.7 + t2 * 0.3
    m2 = classification_metrics(np.stack([1 - s2, s2], 1), t2, 2)
    assert m2["auc"] == pytest.approx(roc_auc_score(t2, s2), abs=1e-6)
    assert m2["map"] == pytest.approx(average_precision_score(t2, s2), abs=1e-6)


def test_codebook_stats_hand_computed():
    codes = torch.tensor([[[0, 0, 1, 3]], [[0, 1, 1, 3]]])  # 2 images, 1 codebook of size 4, 4 positions
    counts = code_histogram(codes, 4)
    assert counts.tolist() == [[3, 3, 0, 2]]
    (s,) = codebook_stats(counts)
    p = np.array([3, 3, 2]) / 8
    assert s["usage_pct"] == 75.0 and s["dead_codes"] == 1 and s["tokens"] == 8
    assert s["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_lpips_per_image_equals_the_training_modules_forward(standins):
    from meditok.evals.perceptual import load_lpips

    lpips = load_lpips(standins["lpips"])
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    per_image = lpips(x, y)
    for i in range(3):
        assert per_image[i].item() == pytest.approx(lpips.net(x[i : i + 1], y[i : i + 1]).item(), rel=1e-5)
    assert lpips(x, x).abs().max().item() < 1e-6


def test_baseline_uses_the_same_bit_budget(tiny_weights):
    tok = MedITokAdapter.from_path(tiny_weights)
    base = DownsampleBaseline(tok.bits_per_image(256, 256))
    assert tok.bits_per_image(256, 256) == 256 * 8 * 12 == base.bits_per_image(256, 256)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    codes = base.encode(x)
    assert codes["pixels"].shape == (2, 3, 32, 32) and codes["pixels"].dtype == torch.uint8
    assert base.decode(codes).shape == x.shape
    assert base.features(x).shape == (2, 3 * 32 * 32)
