"""wbc.results.report: the result table over seeds (means, Student t intervals, layout, per-seed CSV,
metrics.json) from fake per-run metrics written as the evaluate stage writes them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wbc.core.errors import WbcError
from wbc.results.metrics import classification_metrics
from wbc.results.report import ci_half_width, markdown_block, seeds_table, write_results, write_set_outputs, aggregate
from wbc.learn.zoo import table_runs

CLASSES = ["basophil", "eosinophil", "lymphocyte"]
SETS = {"test": 60, "raabin_testb": 40}


def fake_metrics(model: str, seed: int, right: float) -> dict:
    """Metrics of a fake model whose predictions are right about `right` of the time."""
    rng = np.random.default_rng(seed)
    out: dict = {"model": model}
    for name, n in SETS.items():
        y = rng.integers(0, len(CLASSES), n)
        pred = np.where(rng.random(n) < right, y, rng.integers(0, len(CLASSES), n))
        out[name] = classification_metrics(y, pred, CLASSES)
    return out


def write_runs(root: Path, runs: dict[str, list[str]]) -> dict[str, dict]:
    written = {}
    for model, folders in runs.items():
        for k, run in enumerate(folders):
            written[run] = fake_metrics(model, hash(run) % 1000, 0.5 + 0.1 * k)
            (root / run).mkdir(parents=True)
            (root / run / "metrics.json").write_text(json.dumps(written[run]))
    return written


def test_ci_half_width_is_student_t() -> None:
    x = [0.90, 0.93, 0.91]
    expected = stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / np.sqrt(3)
    assert ci_half_width(x) == pytest.approx(expected)
    assert np.isnan(ci_half_width([0.9]))  # one seed: no interval
    assert ci_half_width([0.5, 0.5]) == 0.0


def test_tables_files_and_metrics(tmp_path: Path) -> None:
    runs = table_runs("resnet50", ["vgg16", "tavakoli_svm"], [1, 2, 3])
    assert runs == {"resnet50": ["headline-1", "headline-2", "headline-3"],
                    "vgg16": ["vgg16-1", "vgg16-2", "vgg16-3"],
                    "tavakoli_svm": ["tavakoli_svm-1", "tavakoli_svm-2", "tavakoli_svm-3"]}
    written = write_runs(tmp_path / "ev", runs)
    table = write_results(tmp_path / "ev", runs, "resnet50", [1, 2, 3], tmp_path / "r", tmp_path / "r" / "metrics.json")
    per_seed = pd.read_csv(tmp_path / "r" / "results_seeds.csv")
    assert len(per_seed) == 2 * 3 * 3
    assert list(per_seed.columns[:5]) == ["set", "model", "seed", "headline", "n"]
    row = per_seed[(per_seed["model"] == "vgg16") & (per_seed["seed"] == 2) & (per_seed["set"] == "raabin_testb")].iloc[0]
    assert row["accuracy"] == written["vgg16-2"]["raabin_testb"]["accuracy"]
    # aggregated: rows per set, headline first, means and Student t half-widths of the per-seed values
    agg = pd.read_csv(tmp_path / "r" / "results.csv")
    assert list(zip(agg["set"], agg["model"])) == [(s, m) for s in SETS for m in ("resnet50", "vgg16", "tavakoli_svm")]
    accs = [written[f"headline-{s}"]["test"]["accuracy"] for s in (1, 2, 3)]
    head = agg[(agg["set"] == "test") & (agg["model"] == "resnet50")].iloc[0]
    assert head["accuracy"] == pytest.approx(np.mean(accs), abs=1e-4)
    assert head["accuracy_ci95"] == pytest.approx(ci_half_width(accs), abs=1e-4)
    assert head["seeds"] == 3 and bool(head["headline"])
    f1s = [written[f"headline-{s}"]["test"]["per_class"]["basophil"]["f1"] for s in (1, 2, 3)]
    assert head["basophil_f1"] == pytest.approx(np.mean(f1s), abs=1e-4)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["model"] == "resnet50" and metrics["seeds"] == 3
    assert metrics["test"]["accuracy"] == pytest.approx(np.mean(accs), abs=1e-4)
    assert metrics["test"]["accuracy_ci95"] == pytest.approx(ci_half_width(accs), abs=1e-4)
    assert (tmp_path / "r" / "results.png").stat().st_size > 5000
    # markdown: the paper's layout, mean ± half-width on Acc and macro-F1
    text = (tmp_path / "r" / "results.md").read_text()
    assert "mean over 3 training seeds" in text
    block = text.split("### ")[1]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-3:] == ["Acc", "macro-F1", "bal. Acc"] and header[1] == "Baso P"
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first[0] == "**resnet50** *"
    assert first[-3] == f"{100 * head['accuracy']:.1f} ± {100 * head['accuracy_ci95']:.1f}"
    assert len(table) == 6


def test_one_seed_is_the_paper_table(tmp_path: Path) -> None:
    runs = table_runs("resnet18", ["vgg16"], [7])
    written = write_runs(tmp_path / "ev", runs)
    write_results(tmp_path / "ev", runs, "resnet18", [7], tmp_path / "r", tmp_path / "m.json")
    text = (tmp_path / "r" / "results.md").read_text()
    assert "±" not in text and "training seeds" not in text
    row = [ln for ln in text.splitlines() if ln.startswith("| vgg16")][0]
    assert row.split("|")[-4].strip() == f"{100 * written['vgg16-7']['test']['accuracy']:.1f}"
    assert json.loads((tmp_path / "m.json").read_text())["test"]["accuracy_ci95"] is None


def test_undefined_values_show_a_dash() -> None:
    res = {"m-1": {"model": "m", "test": classification_metrics([0, 1], [1, 1], CLASSES)}}
    table = aggregate(seeds_table(res, {"m": ["m-1"]}, "m"))
    row = [ln for ln in markdown_block(table, "test").splitlines() if ln.startswith("| **m**")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "–"  # basophil P undefined (never predicted)
    assert cells[7] == "–"  # lymphocyte absent: P, S, F1 undefined


def test_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    runs = table_runs("resnet18", ["densenet121"], [1])
    write_runs(tmp_path / "ev", {"resnet18": ["headline-1"]})
    with pytest.raises(WbcError, match="densenet121-1"):
        write_results(tmp_path / "ev", runs, "resnet18", [1], tmp_path / "r", tmp_path / "m.json")


def test_set_outputs(tmp_path: Path) -> None:
    y, pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    m = classification_metrics(y, pred, CLASSES)
    write_set_outputs(tmp_path, "test", y, pred, CLASSES, m, title="x")
    frame = pd.read_csv(tmp_path / "predictions_test.csv")
    assert list(frame.columns) == ["actual", "predicted"]
    assert frame["actual"].tolist() == ["basophil", "eosinophil", "lymphocyte", "lymphocyte"]
    assert frame["predicted"].tolist() == ["basophil", "lymphocyte", "lymphocyte", "eosinophil"]
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
