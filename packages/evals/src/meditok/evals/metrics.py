"""The maths, on well-kept libraries, each checked against an independent computation in the tests.

* `psnr_ssim`: per-image PSNR (the tokenizer's one `psnr`) and SSIM (torchmetrics) on uint8-quantised images (the
  images a user sees); SSIM is Wang et al.'s Gaussian window (11, sigma 1.5) averaged away from the 5-pixel border, which is
  what scikit-image computes with ``gaussian_weights=True, use_sample_covariance=False``.
* `frechet_distance`: ||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), with tr((S1 S2)^1/2) from the eigenvalues of
  S1 S2 (real, non-negative for PSD S1, S2), the approach torchmetrics takes; tested against scipy.linalg.sqrtm.
* `precision_recall`: Kynkäänniemi et al. (2019) k-NN manifolds (k=3) in Inception feature space.
* `classification_metrics`: accuracy, macro one-vs-rest AUC and macro average precision (mAP) via torchmetrics.
* `multilabel_metrics`: per-class AUC and average precision (torchmetrics' binary ones, column by column), their
  macro means over the classes with both positives and negatives in the targets, and label accuracy at 0.5.
* `codebook_stats`: usage, perplexity and dead codes per sub-codebook from a code histogram.
"""

from __future__ import annotations

import numpy as np
import torch


def to_uint8_tensor(x: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [-1,1] -> float [B,3,H,W] holding integers 0..255 (the tokenizer's `quantize_uint8`)."""
    from meditok.tokenizer.preprocessing import quantize_uint8

    return quantize_uint8(x).float()


def psnr_ssim(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM of [-1,1] images after uint8 quantisation (data range 255)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from meditok.tokenizer.preprocessing import psnr as psnr_of

    # float32 (10x faster than float64 on CPU): SSIM agrees with scikit-image (float64) to ~2e-4
    a, b = to_uint8_tensor(real).cpu(), to_uint8_tensor(fake).cpu()
    psnr = psnr_of(a / 127.5 - 1, b / 127.5 - 1, per_image=True)  # the project's one PSNR on the 8-bit images
    psnr = torch.where(torch.isfinite(psnr), psnr, torch.full_like(psnr, 100.0))  # identical images: cap at 100 dB
    # torchmetrics averages the SSIM map over the reflect-padded border too; Wang et al. / scikit-image average
    # only where the 11x11 window fits: take the full map and drop the 5-pixel border.
    _, full = structural_similarity_index_measure(
        b,
        a,
        data_range=255.0,
        reduction="none",
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        return_full_image=True,
    )
    ssim = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    return psnr.float(), ssim.float()


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors [N,D] for a covariance, got {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: {mu1.shape}/{mu2.shape}, {sigma1.shape}/{sigma2.shape}")
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
    return max(value, 0.0)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (fake samples inside the real manifold) and recall (real inside the fake manifold)."""
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    k_real, k_fake = min(k, len(real_t) - 1), min(k, len(fake_t) - 1)
    if k_real < 1 or k_fake < 1:
        raise ValueError("precision/recall need at least 2 real and 2 generated samples")

    def radii(x: torch.Tensor, kk: int) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(kk + 1, dim=1).values  # +1: the distance to itself is 0

    def coverage(manifold: torch.Tensor, manifold_radii: torch.Tensor, queries: torch.Tensor) -> float:
        d = torch.cdist(queries, manifold)
        return float((d <= manifold_radii[None, :]).any(dim=1).double().mean())

    precision = coverage(real_t, radii(real_t, k_real), fake_t)
    recall = coverage(fake_t, radii(fake_t, k_fake), real_t)
    return precision, recall


def classification_metrics(scores: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy (argmax), macro one-vs-rest AUC and macro mAP from class scores [N, C] and integer targets [N]."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_auroc,
        multiclass_average_precision,
    )

    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    out = {"accuracy": float(multiclass_accuracy(s, t, num_classes=num_classes, average="micro"))}
    present = torch.unique(t)
    if len(present) >= 2:
        # classes absent from the targets have no defined AUC/AP: average over the present ones (as scikit-learn
        # does when given only those columns)
        auc = multiclass_auroc(s, t, num_classes=num_classes, average=None)
        ap = multiclass_average_precision(s, t, num_classes=num_classes, average=None)
        if num_classes == 2:
            present = torch.tensor([1])  # binary: the positive class, as sklearn's roc_auc_score on scores[:, 1]
        out["auc"] = float(auc[present].mean())
        out["map"] = float(ap[present].mean())
    else:
        out["auc"] = out["map"] = float("nan")
    return out


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """Multi-label scores [N, C] (per-class probabilities) against 0/1 targets [N, C].

    Per class: AUC and AP (None where the targets hold a single value: undefined); ``auc`` / ``map`` are their means
    over the defined classes (macro); ``accuracy`` = mean over classes of the accuracy of ``score >= threshold``;
    ``exact_match`` = share of images whose every label is right."""
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if s.shape != t.shape or s.ndim != 2:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(t.shape)} must both be [N, C]")
    auc: list[float | None] = []
    ap: list[float | None] = []
    for c in range(t.shape[1]):
        positives = int(t[:, c].sum())
        if 0 < positives < len(t):
            auc.append(float(binary_auroc(s[:, c], t[:, c])))
            ap.append(float(binary_average_precision(s[:, c], t[:, c])))
        else:
            auc.append(None)
            ap.append(None)
    defined = [i for i, v in enumerate(auc) if v is not None]
    pred = (s >= threshold).long()
    return {
        "accuracy": float((pred == t).double().mean()),
        "exact_match": float((pred == t).all(dim=1).double().mean()),
        "auc": float(np.mean([auc[i] for i in defined])) if defined else float("nan"),
        "map": float(np.mean([ap[i] for i in defined])) if defined else float("nan"),
        "per_class_auc": auc,
        "per_class_ap": ap,
        "classes_scored": len(defined),
    }


def confusion_matrix(pred: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(targets), np.asarray(pred)), 1)
    return m


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """codes int [N, K, L] -> counts [K, codebook_size]."""
    codes = codes.long()
    return torch.stack([torch.bincount(codes[:, k].flatten(), minlength=codebook_size) for k in range(codes.shape[1])])


def codebook_stats(counts: torch.Tensor) -> list[dict[str, float]]:
    """Per sub-codebook: usage % (codes used at least once), perplexity exp(H), dead codes (never used)."""
    rows = []
    for c in counts.double():
        p = c / c.sum().clamp_min(1)
        nz = p[p > 0]
        entropy = float(-(nz * nz.log()).sum())
        rows.append(
            {
                "usage_pct": float((c > 0).double().mean() * 100),
                "perplexity": float(np.exp(entropy)),
                "dead_codes": int((c == 0).sum()),
                "tokens": int(c.sum()),
            }
        )
    return rows
