"""wbc.report: the result tables (rows, column groups, headline mark, order) from fake per-model metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbc.errors import WbcError
from wbc.metrics import classification_metrics
from wbc.report import results_table, table_models, write_results, write_set_outputs

CLASSES = ["basophil", "eosinophil", "lymphocyte"]


def fake_metrics(model: str, seed: int, sets: dict[str, int]) -> dict:
    """Metrics of a fake model: random predictions that are right ~70 % of the time."""
    rng = np.random.default_rng(seed)
    out: dict = {"model": model}
    for name, n in sets.items():
        y = rng.integers(0, len(CLASSES), n)
        pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, len(CLASSES), n))
        out[name] = classification_metrics(y, pred, CLASSES)
    return out


def write_fake(root: Path, folder: str, metrics: dict) -> None:
    (root / folder).mkdir(parents=True)
    (root / folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture()
def evaluate_dir(tmp_path: Path) -> Path:
    root = tmp_path / "evaluate"
    sets = {"test": 60, "raabin_testb": 40}
    write_fake(root, "headline", fake_metrics("resnet50", 1, sets))
    write_fake(root, "resnet18", fake_metrics("resnet18", 2, sets))
    write_fake(root, "vgg16", fake_metrics("vgg16", 3, sets))
    write_fake(root, "resnet50", fake_metrics("resnet50", 4, sets))  # the compare run of the headline name
    return root


def test_model_order() -> None:
    assert table_models("resnet50", ["vgg16", "resnet18"]) == ["vgg16", "resnet18", "resnet50"]
    assert table_models("resnet18", ["vgg16", "resnet18"]) == ["vgg16", "resnet18"]


def test_csv_rows_columns_and_values(evaluate_dir: Path, tmp_path: Path) -> None:
    md, csv = tmp_path / "r" / "results.md", tmp_path / "r" / "results.csv"
    write_results(evaluate_dir, "resnet50", ["vgg16", "resnet50", "resnet18"], md, csv)
    table = pd.read_csv(csv)
    # one block per set (test first), rows in compare order inside each block
    assert list(zip(table["set"], table["model"])) == [
        ("test", "vgg16"), ("test", "resnet50"), ("test", "resnet18"),
        ("raabin_testb", "vgg16"), ("raabin_testb", "resnet50"), ("raabin_testb", "resnet18")]
    per_class = [f"{c}_{k}" for c in CLASSES for k in ("precision", "sensitivity", "f1")]
    assert list(table.columns) == ["set", "model", "headline", "n", *per_class,
                                   "accuracy", "macro_f1", "balanced_accuracy"]
    assert table["headline"].tolist() == [False, True, False] * 2
    # the headline row holds the headline checkpoint's numbers (reports/evaluate/headline)
    head = json.loads((evaluate_dir / "headline" / "metrics.json").read_text())
    row = table[(table["set"] == "raabin_testb") & (table["model"] == "resnet50")].iloc[0]
    assert row["accuracy"] == head["raabin_testb"]["accuracy"]
    assert row["eosinophil_sensitivity"] == head["raabin_testb"]["per_class"]["eosinophil"]["sensitivity"]
    assert row["n"] == 40
    vgg = json.loads((evaluate_dir / "vgg16" / "metrics.json").read_text())
    row = table[(table["set"] == "test") & (table["model"] == "vgg16")].iloc[0]
    assert row["basophil_precision"] == vgg["test"]["per_class"]["basophil"]["precision"]


def test_markdown_layout(evaluate_dir: Path, tmp_path: Path) -> None:
    md, csv = tmp_path / "results.md", tmp_path / "results.csv"
    write_results(evaluate_dir, "resnet50", ["resnet18", "vgg16"], md, csv)
    text = md.read_text()
    blocks = text.split("### ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["test (n = 60)", "raabin_testb (n = 40)"]
    table_lines = [line for line in blocks[0].splitlines() if line.startswith("|")]
    header = [c.strip() for c in table_lines[0].strip("|").split("|")]
    assert header == ["Model", "Baso P", "Baso S", "Baso F1", "Eosi P", "Eosi S", "Eosi F1",
                      "Lymp P", "Lymp S", "Lymp F1", "Acc", "macro-F1", "bal. Acc"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table_lines[2:]]
    assert [r[0] for r in rows] == ["resnet18", "vgg16", "**resnet50** *"]  # headline appended, marked
    assert all(len(r) == len(header) for r in rows)
    head = json.loads((evaluate_dir / "headline" / "metrics.json").read_text())
    assert rows[2][10] == f"{100 * head['test']['accuracy']:.1f}"
    assert rows[2][1] == f"{100 * head['test']['per_class']['basophil']['precision']:.1f}"


def test_undefined_values_show_a_dash(tmp_path: Path) -> None:
    res = {"m": {"model": "m", "test": classification_metrics([0, 1], [1, 1], CLASSES)}}
    table = results_table(res, "m")
    assert table.loc[0, "basophil_precision"] is None or np.isnan(table.loc[0, "basophil_precision"])
    from wbc.report import markdown_block

    row = [line for line in markdown_block(table, "test").splitlines() if line.startswith("| **m**")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "–"  # basophil P undefined (never predicted)
    assert cells[7] == "–"  # lymphocyte absent: P, S, F1 undefined


def test_missing_model_is_a_clear_error(evaluate_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WbcError, match="densenet121"):
        write_results(evaluate_dir, "resnet50", ["densenet121"], tmp_path / "a.md", tmp_path / "a.csv")


def test_set_outputs(tmp_path: Path) -> None:
    y, pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    m = classification_metrics(y, pred, CLASSES)
    write_set_outputs(tmp_path, "test", y, pred, CLASSES, m, title="x")
    frame = pd.read_csv(tmp_path / "predictions_test.csv")
    assert list(frame.columns) == ["actual", "predicted"]
    assert frame["actual"].tolist() == ["basophil", "eosinophil", "lymphocyte", "lymphocyte"]
    assert frame["predicted"].tolist() == ["basophil", "lymphocyte", "lymphocyte", "eosinophil"]
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
