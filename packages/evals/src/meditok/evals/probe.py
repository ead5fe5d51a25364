"""`meditok-eval probe`: linear probe (standardised features + multinomial logistic regression, scikit-learn) on
frozen features, per data set and per feature adapter: accuracy, macro AUC, macro mAP, confusion matrix.

Multi-label data (`EvalSet.label_matrix`, e.g. ChestMNIST): one-vs-rest logistic regression (one binary classifier
per class on the same standardised features); per-class AUC and average precision, their macro means (AUC, mAP)
and label accuracy at 0.5, with a per-class table and bar charts in the report."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from meditok.evals import plots
from meditok.evals.data import EvalSet
from meditok.evals.errors import EvalError
from meditok.evals.metrics import classification_metrics, confusion_matrix, multilabel_metrics
from meditok.evals.report import Report


def extract_features(adapter, images: torch.Tensor, batch_size: int, progress: bool = True) -> np.ndarray:
    outs = []
    for i in tqdm(
        range(0, len(images), batch_size), desc=f"features {adapter.name}", unit="batch", disable=not progress
    ):
        outs.append(adapter.features(images[i : i + batch_size]).float().cpu())
    return torch.cat(outs).numpy()


def split_indices(data: EvalSet, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The data's own train/test split when every row has one, else a random split (stratified by class for
    single-label data)."""
    if data.splits and all(s in ("train", "test", "val") for s in data.splits) and "train" in data.splits:
        train = np.array([i for i, s in enumerate(data.splits) if s == "train"])
        test = np.array([i for i, s in enumerate(data.splits) if s != "train"])
        if len(test):
            return train, test
    from sklearn.model_selection import train_test_split

    labels = np.array(data.labels)
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and not data.multi_label else None
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


def linear_probe_multilabel(train_x, train_y, test_x, c: float = 1.0, seed: int = 0) -> np.ndarray:
    """One-vs-rest: one binary logistic regression per class on standardised features; returns the positive-class
    probabilities [N_test, C]. A class with a single value in the training split predicts that value's frequency
    (scikit-learn's constant predictor)."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y = np.asarray(train_y)
    if not ((train_y.sum(0) > 0) & (train_y.sum(0) < len(train_y))).any():
        raise EvalError("the probe's training split has no class with both positive and negative images")
    model = make_pipeline(
        StandardScaler(), OneVsRestClassifier(LogisticRegression(C=c, max_iter=3000, random_state=seed))
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        model.fit(train_x, train_y)
    return np.asarray(model.predict_proba(test_x), dtype=np.float64)


def evaluate_probe_multilabel(
    data: EvalSet,
    adapters: list,
    *,
    batch_size: int = 16,
    test_size: float = 0.3,
    seed: int = 0,
    c: float = 1.0,
    progress: bool = True,
) -> dict:
    y = np.asarray(data.label_matrix)
    train, test = split_indices(data, test_size, seed)
    positives = y[train].sum(0)
    # a class without both positive and negative training images gets a constant score: its AUC 0.5 / AP would be
    # no result, so it is left out of the means, counted and reported
    untrained = [i for i in range(y.shape[1]) if not 0 < positives[i] < len(train)]
    out = {
        "task": "multi-label",
        "classes": list(data.label_names),
        "n_train": len(train),
        "n_test": len(test),
        "positives_train": y[train].sum(0).tolist(),
        "positives_test": y[test].sum(0).tolist(),
        "excluded_untrained_classes": [data.label_names[i] for i in untrained],
        "adapters": {},
    }
    for adapter in adapters:
        feats = extract_features(adapter, data.images, batch_size, progress)
        scores = linear_probe_multilabel(feats[train], y[train], feats[test], c, seed)
        metrics = multilabel_metrics(scores, y[test])
        if untrained:
            for i in untrained:
                metrics["per_class_auc"][i] = metrics["per_class_ap"][i] = None
            defined = [i for i, v in enumerate(metrics["per_class_auc"]) if v is not None]
            if not defined:
                raise EvalError(
                    f"{data.name}: no class has both positive and negative images in the training and the test split"
                )
            metrics["auc"] = float(np.mean([metrics["per_class_auc"][i] for i in defined]))
            metrics["map"] = float(np.mean([metrics["per_class_ap"][i] for i in defined]))
            metrics["classes_scored"] = len(defined)
        metrics["feature_dim"] = int(feats.shape[1])
        metrics["scores"] = scores.tolist()
        metrics["targets"] = y[test].tolist()
        out["adapters"][adapter.name] = metrics
    return out


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
    if data.multi_label:
        return evaluate_probe_multilabel(
            data, adapters, batch_size=batch_size, test_size=test_size, seed=seed, c=c, progress=progress
        )
    classes = sorted(set(data.labels))
    y = np.array([classes.index(label) for label in data.labels])
    train, test = split_indices(data, test_size, seed)
    # test images of a class the training split never shows cannot be classified: excluded, counted, reported
    seen = set(y[train].tolist())
    unseen: dict[str, int] = {}
    for i in test:
        if y[i] not in seen:
            unseen[classes[y[i]]] = unseen.get(classes[y[i]], 0) + 1
    test = np.array([i for i in test if y[i] in seen], dtype=np.int64)
    if not len(test):
        raise EvalError(
            f"{data.name}: every test image's class is absent from the training split ({unseen}); nothing to score"
        )
    out = {"task": "single-label", "classes": classes, "n_train": len(train), "n_test": len(test),
           "excluded_unseen_test": unseen, "adapters": {}}  # fmt: skip
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


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_probe_report(report: Report, results: dict[str, dict], notes: list[str]) -> None:
    single = {ds: r for ds, r in results.items() if r.get("task") != "multi-label"}
    multi = {ds: r for ds, r in results.items() if r.get("task") == "multi-label"}
    intro = []
    if single:
        intro.append(
            "Linear probe: frozen features -> StandardScaler -> multinomial logistic regression (scikit-learn). "
            "Accuracy (argmax), macro one-vs-rest AUC and macro average precision (mAP) over the classes present "
            "in the test split (torchmetrics)."
        )
    if multi:
        intro.append(
            "Multi-label linear probe: frozen features -> StandardScaler -> one-vs-rest logistic regression (one "
            "binary classifier per class, scikit-learn); per-class AUC and average precision (torchmetrics), "
            "mean AUC and mAP = their means over the classes with positive and negative test images; label "
            "accuracy = mean per-class accuracy of probability >= 0.5."
        )
    for ds, r in single.items():
        if r.get("excluded_unseen_test"):
            shown = ", ".join(f"{k}: {v}" for k, v in sorted(r["excluded_unseen_test"].items()))
            notes = [*notes, f"**{ds}: {sum(r['excluded_unseen_test'].values())} test image(s) excluded**: their "
                     f"class never occurs in the training split ({shown}); the scores are over the other {r['n_test']}."]  # fmt: skip
    for ds, r in multi.items():
        if r.get("excluded_untrained_classes"):
            notes = [*notes, f"**{ds}: {len(r['excluded_untrained_classes'])} class(es) left out of the means**: no "
                     f"positive (or no negative) training image ({', '.join(r['excluded_untrained_classes'])})."]  # fmt: skip
    report.text(*intro, *notes)
    if single:
        rows = []
        for ds, r in single.items():
            for name, m in r["adapters"].items():
                rows.append([ds, name, m["feature_dim"], r["n_train"], r["n_test"], m["accuracy"], m["auc"], m["map"]])
        report.table(["dataset", "features", "dim", "train", "test", "accuracy", "AUC", "mAP"], rows)
    if multi:
        report.text("## Multi-label")
        rows = []
        for ds, r in multi.items():
            for name, m in r["adapters"].items():
                rows.append(
                    [
                        ds,
                        name,
                        m["feature_dim"],
                        r["n_train"],
                        r["n_test"],
                        f"{m['classes_scored']}/{len(r['classes'])}",
                        m["accuracy"],
                        m["auc"],
                        m["map"],
                    ]
                )
        report.table(
            ["dataset", "features", "dim", "train", "test", "classes scored", "label acc.", "mean AUC", "mAP"], rows
        )
        for ds, r in multi.items():
            names = list(r["adapters"])
            report.text(f"### {ds}: per class (AUC / AP; – = no positive or no negative test image)")
            report.table(
                ["class", "positives train", "positives test"] + [f"{h} {n}" for n in names for h in ("AUC", "AP")],
                [
                    [cls, r["positives_train"][i], r["positives_test"][i]]
                    + [
                        v
                        for n in names
                        for v in (r["adapters"][n]["per_class_auc"][i], r["adapters"][n]["per_class_ap"][i])
                    ]
                    for i, cls in enumerate(r["classes"])
                ]
                + [
                    ["mean", None, None]
                    + [v for n in names for v in (r["adapters"][n]["auc"], r["adapters"][n]["map"])]
                ],
            )
            for metric, key, label in (("auc", "per_class_auc", "AUC"), ("ap", "per_class_ap", "average precision")):
                plots.grouped_bars(
                    {n: {c: v for c, v in zip(r["classes"], r["adapters"][n][key]) if v is not None} for n in names},
                    report.figure(f"{metric}_per_class_{_safe(ds)}.png", f"{ds}: {label} per class"),
                    label,
                    f"{ds}: {label} per class (one-vs-rest probe)",
                )
    for ds, r in single.items():
        for j, (name, m) in enumerate(r["adapters"].items()):
            plots.confusion_plot(
                np.array(m["confusion"]),
                r["classes"],
                report.figure(_safe(f"confusion_{ds}_{j}.png"), f"confusion matrix: {ds}, {name}"),
                f"{ds}: {name}",
            )
    plots.grouped_bars(
        {
            name: {ds: r["adapters"][name]["auc"] for ds, r in results.items() if name in r["adapters"]}
            for name in dict.fromkeys(n for r in results.values() for n in r["adapters"])
        },
        report.figure("auc_per_dataset.png", "probe AUC (macro) per data set"),
        "AUC",
    )
    if single:
        plots.grouped_bars(
            {
                name: {ds: r["adapters"][name]["accuracy"] for ds, r in single.items() if name in r["adapters"]}
                for name in dict.fromkeys(n for r in single.values() for n in r["adapters"])
            },
            report.figure("accuracy_per_dataset.png", "probe accuracy per data set"),
            "accuracy",
        )
    report.metrics["datasets"] = results
