"""wbc.results.metrics: the paper's per-class metrics against values worked out by hand from a confusion matrix."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wbc.results.metrics import classification_metrics, confusion, one_vs_rest_accuracy, plot_confusion, row_normalise

# rows: true class, columns: predicted class (16 images)
CM = [[5, 1, 0],
      [2, 3, 1],
      [0, 0, 4]]
CLASSES = ["a", "b", "c"]


def labels_from(cm: list[list[int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y_true / y_pred pairs realising `cm`, shuffled (order must not matter)."""
    pairs = [(t, p) for t, row in enumerate(cm) for p, n in enumerate(row) for _ in range(n)]
    order = np.random.default_rng(seed).permutation(len(pairs))
    arr = np.array(pairs)[order]
    return arr[:, 0], arr[:, 1]


def test_per_class_and_overall_match_hand_computation() -> None:
    y_true, y_pred = labels_from(CM)
    m = classification_metrics(y_true, y_pred, CLASSES)
    # class a: TP 5, FP 2 (b->a), FN 1 (a->b), TN 16 - 8 = 8
    # class b: TP 3, FP 1 (a->b), FN 3 (b->a, b->c), TN 16 - 7 = 9
    # class c: TP 4, FP 1 (b->c), FN 0, TN 16 - 5 = 11
    expected = {
        "a": {"precision": 5 / 7, "sensitivity": 5 / 6, "f1": 10 / 13, "accuracy": 13 / 16, "support": 6},
        "b": {"precision": 3 / 4, "sensitivity": 3 / 6, "f1": 6 / 10, "accuracy": 12 / 16, "support": 6},
        "c": {"precision": 4 / 5, "sensitivity": 4 / 4, "f1": 8 / 9, "accuracy": 15 / 16, "support": 4},
    }
    for cls, values in expected.items():
        for key, value in values.items():
            assert m["per_class"][cls][key] == pytest.approx(value, abs=5e-5), (cls, key)
    assert m["n"] == 16
    assert m["accuracy"] == pytest.approx(12 / 16, abs=5e-5)
    assert m["macro_f1"] == pytest.approx((10 / 13 + 6 / 10 + 8 / 9) / 3, abs=5e-5)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 6 + 4 / 4) / 3, abs=5e-5)
    assert m["confusion_matrix"] == CM


def test_rounding_and_json() -> None:
    m = classification_metrics(*labels_from(CM), CLASSES)
    assert m["per_class"]["a"]["precision"] == 0.7143  # 5/7 = 0.714285...
    assert m["per_class"]["a"]["f1"] == 0.7692  # 10/13 = 0.769230...
    assert json.loads(json.dumps(m)) == m


def test_absent_class_is_undefined_and_left_out_of_macro_f1() -> None:
    # a fourth class "d" never occurs: its P/S/F1 are undefined (None), its one-vs-rest accuracy is 1
    y_true, y_pred = labels_from(CM)
    m = classification_metrics(y_true, y_pred, CLASSES + ["d"])
    assert m["per_class"]["d"] == {"precision": None, "sensitivity": None, "f1": None, "accuracy": 1.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((10 / 13 + 6 / 10 + 8 / 9) / 3, abs=5e-5)
    # a class present but never predicted: precision undefined, sensitivity and F1 are 0
    m2 = classification_metrics([0, 1, 1], [1, 1, 1], ["x", "y"])
    assert m2["per_class"]["x"]["precision"] is None
    assert m2["per_class"]["x"]["sensitivity"] == 0.0 and m2["per_class"]["x"]["f1"] == 0.0
    assert m2["per_class"]["y"]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0), abs=5e-5)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], CLASSES)
    with pytest.raises(ValueError):
        classification_metrics([], [], CLASSES)
    with pytest.raises(ValueError):
        classification_metrics([0, 3], [0, 1], CLASSES)


def test_confusion_helpers() -> None:
    y_true, y_pred = labels_from(CM)
    cm = confusion(y_true, y_pred, 4)
    assert cm.shape == (4, 4) and cm[:3, :3].tolist() == CM and cm[3].sum() == 0
    np.testing.assert_allclose(one_vs_rest_accuracy(np.array(CM)), [13 / 16, 12 / 16, 15 / 16])
    norm = row_normalise(cm)
    np.testing.assert_allclose(norm[1], [2 / 6, 3 / 6, 1 / 6, 0])
    assert norm[3].tolist() == [0, 0, 0, 0]  # an empty row stays zero, no division warning


def test_plot_confusion_writes_png(tmp_path) -> None:
    path = plot_confusion(np.array(CM), CLASSES, tmp_path / "sub" / "cm.png", title="t")
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width > img.height > 100  # two panels side by side
