"""Evaluation outputs and the result tables (the paper's Table 8/9 layout).

Per model and test set (written by the evaluate stage, `write_set_outputs`):
- `predictions_<set>.csv`: columns `actual,predicted` (class names), one row per image, in the
  packed order -- the data of DVC's `confusion` plot template;
- `confusion_<set>.png`: counts and row-normalised confusion matrices.

Result tables (the report stage, `results_table` / `write_results`), read from
`reports/evaluate/<name>/metrics.json`:
- `reports/results.md`: one block per test set (`test`, then each external set); a row per model
  (order of the `compare` param, the headline model appended when not in it, marked with *);
  per class P (precision), S (sensitivity) and F1, grouped by class, then Acc (overall accuracy),
  macro-F1 and balanced accuracy. Values in percent, one decimal.
- `reports/results.csv`: WIDE format, the same numbers as fractions (4 decimals): one row per
  (set, model) with columns `set, model, headline, n, <class>_precision, <class>_sensitivity,
  <class>_f1` (per class), `accuracy, macro_f1, balanced_accuracy`.
The headline row is the headline checkpoint's evaluation (`reports/evaluate/headline/`), i.e. the
numbers of `reports/metrics.json`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wbc.errors import WbcError
from wbc.metrics import plot_confusion

#: Per-class metrics of the table, with their column abbreviations (the paper's P, S, F1).
CLASS_METRICS = (("precision", "P"), ("sensitivity", "S"), ("f1", "F1"))
#: Overall metrics of the table.
OVERALL_METRICS = (("accuracy", "Acc"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "bal. Acc"))
HEADLINE_MARK = "*"


def write_set_outputs(
    out_dir: str | Path,
    set_name: str,
    y_true: Sequence[int],
    y_pred: Sequence[int],
    classes: Sequence[str],
    metrics: Mapping[str, Any],
    title: str = "",
) -> None:
    """Write `predictions_<set>.csv` (actual,predicted) and `confusion_<set>.png` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = np.asarray(classes, dtype=object)
    pd.DataFrame({"actual": names[np.asarray(y_true)], "predicted": names[np.asarray(y_pred)]}).to_csv(
        out_dir / f"predictions_{set_name}.csv", index=False, lineterminator="\n")
    plot_confusion(np.asarray(metrics["confusion_matrix"]), classes, out_dir / f"confusion_{set_name}.png", title)


def table_models(model: str, compare: Sequence[str]) -> list[str]:
    """Row order: the `compare` models, then the headline model when it is not among them."""
    order = list(dict.fromkeys(compare))
    return order if model in order else [*order, model]


def load_results(evaluate_dir: str | Path, model: str, compare: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{model name: metrics dict} in table order; the headline model's from `<dir>/headline/`."""
    evaluate_dir = Path(evaluate_dir)
    results = {}
    for name in table_models(model, compare):
        path = evaluate_dir / ("headline" if name == model else name) / "metrics.json"
        if not path.is_file():
            raise WbcError(f"{path} not found (run the evaluate stage)")
        results[name] = json.loads(path.read_text(encoding="utf-8"))
    return results


def _sets(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Test sets in first-seen order, `test` first."""
    seen: dict[str, None] = {}
    for res in results.values():
        for key, value in res.items():
            if isinstance(value, Mapping) and "per_class" in value:
                seen[key] = None
    return sorted(seen, key=lambda s: s != "test")


def _classes(results: Mapping[str, Mapping[str, Any]], set_name: str) -> list[str]:
    for res in results.values():
        if set_name in res:
            return list(res[set_name]["per_class"])
    return []


def results_table(results: Mapping[str, Mapping[str, Any]], headline: str) -> pd.DataFrame:
    """The wide table: one row per (set, model), fractions as stored in the metrics files."""
    rows = []
    for set_name in _sets(results):
        classes = _classes(results, set_name)
        for name, res in results.items():
            if set_name not in res:
                continue
            m = res[set_name]
            row: dict[str, Any] = {"set": set_name, "model": name, "headline": name == headline, "n": m["n"]}
            for cls in classes:
                for key, _ in CLASS_METRICS:
                    row[f"{cls}_{key}"] = m["per_class"][cls][key]
            for key, _ in OVERALL_METRICS:
                row[key] = m[key]
            rows.append(row)
    return pd.DataFrame(rows)


def _pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.1f}"


def _short(cls: str) -> str:
    """Class name in a column header: capitalised, shortened to 4 letters (Baso, Eosi, ...)."""
    return cls[:4].capitalize()


def markdown_block(table: pd.DataFrame, set_name: str) -> str:
    """The markdown table of one test set (rows: models; columns grouped by class)."""
    block = table[table["set"] == set_name]
    classes = [c[: -len("_precision")] for c in block.columns if c.endswith("_precision")]
    header = ["Model"] + [f"{_short(c)} {abbr}" for c in classes for _, abbr in CLASS_METRICS]
    header += [abbr for _, abbr in OVERALL_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in block.to_dict("records"):
        name = f"**{row['model']}** {HEADLINE_MARK}" if row["headline"] else row["model"]
        cells = [name] + [_pct(row[f"{c}_{k}"]) for c in classes for k, _ in CLASS_METRICS]
        cells += [_pct(row[k]) for k, _ in OVERALL_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    n = ", ".join(sorted({str(v) for v in block["n"]}))
    legend = ", ".join(f"{_short(c)} = {c}" for c in classes)
    return f"### {set_name} (n = {n})\n\n" + "\n".join(lines) + f"\n\n{legend}.\n"


def results_markdown(table: pd.DataFrame, headline: str) -> str:
    """The whole reports/results.md text."""
    parts = [
        "# Results\n",
        "Per class: P = precision, S = sensitivity (recall), F1; Acc = overall accuracy, macro-F1, "
        "bal. Acc = balanced accuracy. Values in %; – = undefined (no image of the class predicted "
        f"or present). {HEADLINE_MARK} = headline model (`model` param, `reports/metrics.json`: "
        f"{headline}). Same numbers as fractions in `results.csv` (wide: one row per set x model).\n",
    ]
    parts += [markdown_block(table, s) for s in dict.fromkeys(table["set"])] if len(table) else ["No results.\n"]
    return "\n".join(parts)


def write_results(evaluate_dir: str | Path, model: str, compare: Sequence[str],
                  md_path: str | Path, csv_path: str | Path) -> pd.DataFrame:
    """The report stage: read the per-model metrics, write results.md and results.csv."""
    table = results_table(load_results(evaluate_dir, model, compare), model)
    for path in (md_path, csv_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(md_path).write_text(results_markdown(table, model), encoding="utf-8")
    table.to_csv(csv_path, index=False, lineterminator="\n")
    return table
