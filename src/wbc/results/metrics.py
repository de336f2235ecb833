"""Classification metrics of the paper (equations 1-4) and the confusion-matrix figure.

Pure functions of label arrays (no torch). Per class, one-vs-rest:

- precision   = TP / (TP + FP)
- sensitivity = TP / (TP + FN)                (recall)
- F1          = 2 TP / (2 TP + FP + FN)       (harmonic mean of the two)
- accuracy    = (TP + TN) / (TP + TN + FP + FN)

Overall: accuracy (fraction correct), macro-F1 (mean F1 over the classes that occur in the
true or predicted labels), balanced accuracy (mean sensitivity over the classes that occur in
the true labels). An undefined value (a zero denominator) is reported as ``None`` (JSON null).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

#: decimals kept in the metric dicts (JSON files, tables)
DECIMALS = 4


def _num(value: float, decimals: int = DECIMALS) -> float | None:
    """A JSON-friendly rounded float; NaN (undefined) becomes None."""
    value = float(value)
    return None if math.isnan(value) else round(value, decimals)


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts, shape (n_classes, n_classes): row = true class index, column = predicted index."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def one_vs_rest_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per class (TP + TN) / N from a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        return np.full(cm.shape[0], np.nan)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    return (tp + tn) / total


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]
) -> dict[str, Any]:
    """All metrics of one test set as a JSON-serialisable dict (floats rounded to DECIMALS).

    `y_true`, `y_pred`: label indices into `classes`. Returns
    ``{"n", "accuracy", "macro_f1", "balanced_accuracy", "per_class": {class: {"precision",
    "sensitivity", "f1", "accuracy", "support"}}, "confusion_matrix": [[counts]]}``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-d and the same length: {y_true.shape} vs {y_pred.shape}")
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    n = len(classes)
    labels = list(range(n))
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.min() < 0 or arr.max() >= n:
            raise ValueError(f"{name} holds a label index outside 0..{n - 1}")
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=np.nan
    )
    cm = confusion(y_true, y_pred, n)
    ovr_acc = one_vs_rest_accuracy(cm)
    per_class = {
        cls: {
            "precision": _num(precision[i]),
            "sensitivity": _num(recall[i]),
            "f1": _num(f1[i]),
            "accuracy": _num(ovr_acc[i]),
            "support": int(support[i]),
        }
        for i, cls in enumerate(classes)
    }
    return {
        "n": int(len(y_true)),
        "accuracy": _num(accuracy_score(y_true, y_pred)),
        "macro_f1": _num(f1_score(y_true, y_pred, average="macro", zero_division=np.nan)),
        "balanced_accuracy": _num(balanced_accuracy_score(y_true, y_pred)),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the per-class sensitivity on the diagonal); empty rows stay 0."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save a PNG with two panels: counts and row-normalised fractions, annotated cells."""
    import matplotlib  # lazy: matplotlib takes a second to import and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    panels = (("counts", cm, "d"), ("row-normalised (sensitivity on the diagonal)", row_normalise(cm), ".2f"))
    size = 2.2 + 0.9 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size + 0.6), layout="constrained")
    for ax, (name, mat, fmt) in zip(axes, panels):
        norm = mat / mat.max() if mat.max() > 0 else mat.astype(float)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(mat):
            ax.text(c, r, format(value, fmt), ha="center", va="center", fontsize=9,
                    color="white" if norm[r, c] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
