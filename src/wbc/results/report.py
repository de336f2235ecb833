"""Evaluation outputs and the result tables (the paper's Table 8/9 layout).

Per model and test set (written by the evaluate stage, `write_set_outputs`):
- `predictions_<set>.csv`: columns `actual,predicted` (class names), one row per image, in the
  packed order -- the data of DVC's `confusion` plot template;
- `confusion_<set>.png`: counts and row-normalised confusion matrices.

Result tables over seeds (the report stage, `write_results`), read from
`<evaluate dir>/<run>/metrics.json`, one run per (model, seed) (`wbc.learn.runs.table_runs`: the
headline model's runs are `headline-<seed>`, the others `<model>-<seed>`):
- `results_seeds.csv`: one row per (set, model, seed): `set, model, seed, headline, n`, per class
  `<class>_precision, <class>_sensitivity, <class>_f1`, then `accuracy, macro_f1,
  balanced_accuracy` (fractions, 4 decimals).
- `results.csv`: one row per (set, model): the same columns averaged over the seeds (`seeds` =
  their count), plus `accuracy_ci95` and `macro_f1_ci95`: the half-width of the 95 % confidence
  interval of the mean, Student t with k - 1 degrees of freedom (empty with one seed).
- `results.md`: one block per test set (`test`, then each external set), the paper's Table 8/9
  layout: a row per model (the headline first, marked *, then `compare` order), per class P
  (precision), S (sensitivity) and F1 means, then Acc, macro-F1 (mean ± half-width) and balanced
  accuracy, in percent. With one seed it is the paper's table exactly (no intervals).
- `results.png`: accuracy per model with its interval, one panel per test set.
- `metrics.json` (`dvc metrics diff`): the headline model's means and half-widths per set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from scipy import stats

from wbc.core.errors import WbcError
from wbc.results.metrics import plot_confusion

#: Per-class metrics of the table, with their column abbreviations (the paper's P, S, F1).
CLASS_METRICS = (("precision", "P"), ("sensitivity", "S"), ("f1", "F1"))
#: Overall metrics of the table.
OVERALL_METRICS = (("accuracy", "Acc"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "bal. Acc"))
HEADLINE_MARK = "*"
#: Metrics given with a confidence interval over seeds.
CI_METRICS = ("accuracy", "macro_f1")
#: Confidence level of the intervals over seeds.
CONFIDENCE = 0.95


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


def load_runs(evaluate_dir: str | Path, runs: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """{run folder: metrics dict} for every run of `runs` ({model: [run folders]}); a clear error
    naming the missing files (run the evaluate stages)."""
    evaluate_dir = Path(evaluate_dir)
    paths = {run: evaluate_dir / run / "metrics.json" for folders in runs.values() for run in folders}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise WbcError(f"evaluation results not found: {', '.join(missing)} (run the evaluate stages: dvc repro)")
    return {run: json.loads(p.read_text(encoding="utf-8")) for run, p in paths.items()}


def _sets(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Test sets in first-seen order, `test` first."""
    seen: dict[str, None] = {}
    for res in results.values():
        for key, value in res.items():
            if isinstance(value, Mapping) and "per_class" in value:
                seen[key] = None
    return sorted(seen, key=lambda s: s != "test")


def _seed(run: str) -> int:
    return int(run.rsplit("-", 1)[1])


def seeds_table(results: Mapping[str, Mapping[str, Any]], runs: Mapping[str, Sequence[str]], headline: str) -> pd.DataFrame:
    """One row per (set, model, seed), fractions as stored in the metrics files."""
    rows = []
    for set_name in _sets(results):
        for model, folders in runs.items():
            for run in folders:
                m = results[run].get(set_name)
                if m is None:
                    continue
                row: dict[str, Any] = {"set": set_name, "model": model, "seed": _seed(run),
                                       "headline": model == headline, "n": m["n"]}
                for cls, values in m["per_class"].items():
                    for key, _ in CLASS_METRICS:
                        row[f"{cls}_{key}"] = values[key]
                for key, _ in OVERALL_METRICS:
                    row[key] = m[key]
                rows.append(row)
    return pd.DataFrame(rows)


def ci_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student t confidence interval of the mean of `values` (NaN for < 2)."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    return float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def aggregate(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, model): means over seeds, `seeds` (count) and the CI half-widths."""
    metric_cols = [c for c in per_seed.columns if c not in ("set", "model", "seed", "headline", "n")]
    rows = []
    for (set_name, model), group in per_seed.groupby(["set", "model"], sort=False):
        row: dict[str, Any] = {"set": set_name, "model": model, "headline": bool(group["headline"].iloc[0]),
                               "n": int(group["n"].iloc[0]), "seeds": len(group)}
        for col in metric_cols:
            values = pd.to_numeric(group[col], errors="coerce")
            row[col] = round(float(values.mean()), 4) if values.notna().any() else float("nan")
        for col in CI_METRICS:
            hw = ci_half_width(pd.to_numeric(group[col], errors="coerce").tolist())
            row[f"{col}_ci95"] = round(hw, 4) if not np.isnan(hw) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.1f}"


def _pct_ci(row: Mapping[str, Any], key: str) -> str:
    hw = row.get(f"{key}_ci95")
    if hw is None or (isinstance(hw, float) and np.isnan(hw)):
        return _pct(row[key])
    return f"{_pct(row[key])} ± {100 * hw:.1f}"


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
        cells += [_pct_ci(row, k) if k in CI_METRICS else _pct(row[k]) for k, _ in OVERALL_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    n = ", ".join(sorted({str(v) for v in block["n"]}))
    legend = ", ".join(f"{_short(c)} = {c}" for c in classes)
    return f"### {set_name} (n = {n})\n\n" + "\n".join(lines) + f"\n\n{legend}.\n"


def results_markdown(table: pd.DataFrame, headline: str, seeds: Sequence[int]) -> str:
    """The whole results.md text."""
    k = len(seeds)
    spread = ("" if k < 2 else f" Each value is the mean over {k} training seeds ({', '.join(map(str, seeds))}); "
              f"Acc and macro-F1 are given as mean ± half-width of the {100 * CONFIDENCE:g} % confidence "
              f"interval (Student t, {k - 1} degree{'s' if k > 2 else ''} of freedom).")
    parts = [
        "# Results\n",
        "Per class: P = precision, S = sensitivity (recall), F1; Acc = overall accuracy, macro-F1, "
        "bal. Acc = balanced accuracy. Values in %; – = undefined (no image of the class predicted "
        f"or present). {HEADLINE_MARK} = headline model (`model` param, `reports/metrics.json`: "
        f"{headline}).{spread} Same numbers as fractions in `results.csv` (one row per set x model) "
        "and per seed in `results_seeds.csv`.\n",
    ]
    parts += [markdown_block(table, s) for s in dict.fromkeys(table["set"])] if len(table) else ["No results.\n"]
    return "\n".join(parts)


def headline_metrics(table: pd.DataFrame, headline: str) -> dict[str, Any]:
    """metrics.json: per set, the headline model's means and CI half-widths (`dvc metrics diff`)."""
    out: dict[str, Any] = {"model": headline}
    for row in table[table["model"] == headline].to_dict("records"):
        out["seeds"] = int(row["seeds"])
        entry = {"n": int(row["n"])}
        for key, _ in OVERALL_METRICS:
            entry[key] = row[key]
            if key in CI_METRICS:
                hw = row[f"{key}_ci95"]
                entry[f"{key}_ci95"] = None if np.isnan(hw) else hw
        out[row["set"]] = entry
    return out


def write_results(evaluate_dir: str | Path, runs: Mapping[str, Sequence[str]], headline: str,
                  seeds: Sequence[int], out_dir: str | Path, metrics_path: str | Path) -> pd.DataFrame:
    """The report stage: read every run's metrics, write `out_dir`/results.{md,csv,png},
    results_seeds.csv and `metrics_path`. Returns the aggregated table."""
    per_seed = seeds_table(load_runs(evaluate_dir, runs), runs, headline)
    table = aggregate(per_seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(results_markdown(table, headline, seeds), encoding="utf-8")
    table.to_csv(out_dir / "results.csv", index=False, lineterminator="\n")
    per_seed.to_csv(out_dir / "results_seeds.csv", index=False, lineterminator="\n")
    interval_plot(table, out_dir / "results.png", confidence=CONFIDENCE)
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics_path).write_text(json.dumps(headline_metrics(table, headline), indent=2) + "\n", encoding="utf-8")
    return table


def interval_plot(table: pd.DataFrame, path: str | Path, confidence: float = 0.95) -> Path:
    """Accuracy per model with its confidence interval over seeds, one panel per test set.

    `table`: the aggregated result table (`wbc.results.report.aggregate`: columns set, model, headline,
    seeds, accuracy, accuracy_ci95). A model trained with one seed is drawn without a bar; an
    interval reaching past 0 or 100 % (few seeds: wide Student t intervals) is drawn up to the bound.
    """
    import matplotlib  # lazy: matplotlib takes a second to import and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(table["set"]))
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(4.5 * max(1, len(sets)), 0.9 + 0.45 * table["model"].nunique()),
                             squeeze=False, layout="constrained")
    for ax, set_name in zip(axes[0], sets):
        block = table[table["set"] == set_name].iloc[::-1]  # first model on top
        y = np.arange(len(block))
        acc = 100 * block["accuracy"].to_numpy(dtype=float)
        err = 100 * np.nan_to_num(block["accuracy_ci95"].to_numpy(dtype=float), nan=0.0)
        colours = ["tab:red" if h else "tab:blue" for h in block["headline"]]
        xerr = np.vstack([np.minimum(err, acc), np.minimum(err, 100 - acc)])  # drawn within [0, 100] %
        ax.errorbar(acc, y, xerr=xerr, fmt="none", ecolor="0.3", capsize=4)
        ax.set_xlim(0, 102)
        ax.scatter(acc, y, c=colours, zorder=3)
        ax.set_yticks(y, [f"{m} (k={k})" for m, k in zip(block["model"], block["seeds"])])
        ax.set_xlabel(f"accuracy, % (mean and {100 * confidence:g} % CI over seeds)")
        ax.set_title(f"{set_name} (n = {int(block['n'].iloc[0])})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path
