"""`meditok-eval probe`: linear probe (standardised features + multinomial logistic regression, scikit-learn) on
frozen features, per data set and per feature adapter: accuracy, macro AUC, macro mAP, confusion matrix."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from meditok.evals import plots
from meditok.evals.data import EvalSet
from meditok.evals.errors import EvalError
from meditok.evals.metrics import classification_metrics, confusion_matrix
from meditok.evals.report import Report


def extract_features(adapter, images: torch.Tensor, batch_size: int, progress: bool = True) -> np.ndarray:
    outs = []
    for i in tqdm(
        range(0, len(images), batch_size), desc=f"features {adapter.name}", unit="batch", disable=not progress
    ):
        outs.append(adapter.features(images[i : i + batch_size]).float().cpu())
    return torch.cat(outs).numpy()


def split_indices(data: EvalSet, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The data's own train/test split when every row has one, else a stratified random split."""
    if data.splits and all(s in ("train", "test", "val") for s in data.splits) and "train" in data.splits:
        train = np.array([i for i, s in enumerate(data.splits) if s == "train"])
        test = np.array([i for i, s in enumerate(data.splits) if s != "train"])
        if len(test):
            return train, test
    from sklearn.model_selection import train_test_split

    labels = np.array(data.labels)
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 else None
    idx = np.arange(len(labels))
    if stratify is not None:  # a stratified split needs at least one test image per class
        test_size = max(int(np.ceil(test_size * len(labels))), len(counts))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def linear_probe(train_x, train_y, test_x, num_classes: int, c: float = 1.0, seed: int = 0) -> np.ndarray:
    """Fit on train, return class scores [N_test, num_classes] (probabilities; absent classes get 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise EvalError("the probe's training split holds a single class")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
    model.fit(train_x, train_y)
    proba = model.predict_proba(test_x)
    scores = np.zeros((len(test_x), num_classes))
    scores[:, model[-1].classes_] = proba
    return scores


def evaluate_probe(
    data: EvalSet,
    adapters: list,
    *,
    batch_size: int = 16,
    test_size: float = 0.3,
    seed: int = 0,
    c: float = 1.0,
    progress: bool = True,
) -> dict:
    classes = sorted(set(data.labels))
    y = np.array([classes.index(label) for label in data.labels])
    train, test = split_indices(data, test_size, seed)
    out = {"classes": classes, "n_train": len(train), "n_test": len(test), "adapters": {}}
    for adapter in adapters:
        feats = extract_features(adapter, data.images, batch_size, progress)
        scores = linear_probe(feats[train], y[train], feats[test], len(classes), c, seed)
        metrics = classification_metrics(scores, y[test], len(classes))
        pred = scores.argmax(1)
        metrics["feature_dim"] = int(feats.shape[1])
        metrics["confusion"] = confusion_matrix(pred, y[test], len(classes)).tolist()
        metrics["scores"] = scores.tolist()
        metrics["targets"] = y[test].tolist()
        out["adapters"][adapter.name] = metrics
    return out


def write_probe_report(report: Report, results: dict[str, dict], notes: list[str]) -> None:
    report.text(
        "Linear probe: frozen features -> StandardScaler -> multinomial logistic regression (scikit-learn). "
        "Accuracy (argmax), macro one-vs-rest AUC and macro average precision (mAP) over the classes present "
        "in the test split (torchmetrics).",
        *notes,
    )
    rows = []
    for ds, r in results.items():
        for name, m in r["adapters"].items():
            rows.append([ds, name, m["feature_dim"], r["n_train"], r["n_test"], m["accuracy"], m["auc"], m["map"]])
    report.table(["dataset", "features", "dim", "train", "test", "accuracy", "AUC", "mAP"], rows)
    for ds, r in results.items():
        for j, (name, m) in enumerate(r["adapters"].items()):
            safe = f"confusion_{ds}_{j}.png".replace("/", "_").replace(" ", "_")
            plots.confusion_plot(
                np.array(m["confusion"]),
                r["classes"],
                report.figure(safe, f"confusion matrix: {ds}, {name}"),
                f"{ds}: {name}",
            )
    plots.grouped_bars(
        {
            name: {ds: r["adapters"][name]["accuracy"] for ds, r in results.items() if name in r["adapters"]}
            for name in {n for r in results.values() for n in r["adapters"]}
        },
        report.figure("accuracy_per_dataset.png", "probe accuracy per data set"),
        "accuracy",
    )
    report.metrics["datasets"] = results
