"""The generalization report: in-domain test vs every external set, per model and setting.

Each evaluation (`wbc.results.evaluate.evaluate_predictor`, the evaluate stage, `wbc evaluate`) writes a
`metrics.json` holding the model, its `setting` (crop, norm, stain augmentation, stain
normalisation, adaptation) and the metrics of every set. `collect(runs)` reads them (a run is a
folder holding `metrics.json`, or a folder of such folders; give it a label with `LABEL=DIR`),
`accuracy_table` puts accuracy and macro-F1 of every set side by side, and `write_report` writes
a report and a bar plot (`wbc generalization` is the command).

Over seeds (`write_seed_report`, what the report stage writes to `reports/generalization.md` for the
models of the result table, and what `benchmarks/generalization_bench.py` writes for the recipes):
per group of runs (a model, or a recipe, trained once per seed) and set, the mean accuracy and
macro-F1 with the 95 % Student-t half-width over the seeds, and the crop fallback rate (the share
of a set's images whose crop did not take the model's own path, `wbc.cells.cellcrop`), so a
number is never read without knowing which crop produced it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wbc.results.report import ci_half_width

#: Setting values that are the defaults (left out of a setting's label).
DEFAULTS = {"crop": "centre", "norm": "batch", "stain_augment": False, "stain_norm": "none", "adapt": "none",
            "tta": False, "ensemble": 1}


def setting_label(setting: Mapping[str, Any] | None) -> str:
    """A short label of a model setting: "baseline" or its non-default levers, e.g. "crop=cell + adapt=adabn"."""
    parts = []
    for key, default in DEFAULTS.items():
        value = (setting or {}).get(key, default)
        if key == "crop" and value == "original image":
            continue
        if value != default and value not in ("n/a",):
            parts.append(key if value is True else f"{key}={value}")
    if (setting or {}).get("crop") == "cell":
        parts[0] = f"crop=cell {float(setting.get('cell_fraction', 0.6)):g}"
    elif (setting or {}).get("crop") == "rbc":
        parts[0] = f"crop=rbc {float(setting.get('rbc_span', 2.5)):g}"
    return " + ".join(parts) or "baseline"


def _metric_files(run: Path) -> list[Path]:
    """`run/metrics.json`, or the metrics.json of each subfolder of `run`."""
    direct = run / "metrics.json"
    return [direct] if direct.is_file() else sorted(run.glob("*/metrics.json"))


def collect(runs: Sequence[str | Path] | Mapping[str, str | Path]) -> pd.DataFrame:
    """One row per (run, set): label, model, setting label, set, n, accuracy, macro_f1 (in %)."""
    items = runs.items() if isinstance(runs, Mapping) else [(None, r) for r in runs]
    rows = []
    for label, run in items:
        for path in _metric_files(Path(run)):
            res = json.loads(path.read_text(encoding="utf-8"))
            setting = setting_label(res.get("setting"))
            for set_name, m in res.items():
                if isinstance(m, Mapping) and "accuracy" in m:
                    crop = m.get("crop") or {}
                    rows.append({"label": label or setting, "model": res.get("model", ""), "setting": setting,
                                 "set": set_name, "n": m.get("n"), "accuracy": 100.0 * float(m["accuracy"]),
                                 "macro_f1": 100.0 * float(m["macro_f1"]),
                                 "fallback": 100.0 * float(crop["fallback_rate"]) if "fallback_rate" in crop
                                 else np.nan})
    return pd.DataFrame(rows, columns=["label", "model", "setting", "set", "n", "accuracy", "macro_f1", "fallback"])


def set_order(frame: pd.DataFrame) -> list[str]:
    """`test` first, then the other sets in first-seen order."""
    sets = list(dict.fromkeys(frame["set"]))
    return sorted(sets, key=lambda s: s != "test")


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per (model, label), accuracy and macro-F1 of every set side by side."""
    rows = []
    for (model, label), group in frame.groupby(["model", "label"], sort=False):
        row: dict[str, Any] = {"model": model, "setting": label}
        for s in set_order(frame):
            hit = group[group["set"] == s]
            row[f"{s} acc"] = float(hit["accuracy"].iloc[0]) if len(hit) else np.nan
            row[f"{s} macro-F1"] = float(hit["macro_f1"].iloc[0]) if len(hit) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, title: str = "Generalization to other labs", notes: str = "") -> str:
    """The report text: the side-by-side table (values in %) and the set sizes."""
    table = accuracy_table(frame)
    cols = list(table.columns)
    lines = [f"# {title}", "", *([notes.strip(), ""] if notes.strip() else []),
             "Accuracy and macro-F1 in %, per model and setting, on the in-domain test split and every external set.",
             "", "| " + " | ".join(cols) + " |", "|:---|:---|" + "---:|" * (len(cols) - 2)]
    for row in table.itertuples(index=False):
        cells = [str(v) if isinstance(v, str) else ("–" if np.isnan(v) else f"{v:.1f}") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = frame.groupby("set", sort=False)["n"].max()
    lines += ["", "Images per set: " + ", ".join(f"{s} {int(sizes[s])}" for s in set_order(frame)) + "."]
    return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, path: str | Path) -> Path:
    """Grouped bars: accuracy per set (panels) for each (model, setting)."""
    import matplotlib  # lazy: matplotlib takes a second to import and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = accuracy_table(frame)
    sets = set_order(frame)
    names = [f"{m}: {s}" for m, s in zip(table["model"], table["setting"])]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 0.35 * len(names) + 1.5), sharey=True,
                             squeeze=False)
    for ax, s in zip(axes[0], sets):
        ax.barh(range(len(names)), table[f"{s} acc"].fillna(0), color="tab:blue", label="accuracy")
        ax.barh(range(len(names)), table[f"{s} macro-F1"].fillna(0), height=0.35, color="tab:orange", label="macro-F1")
        ax.set_title(s)
        ax.set_xlim(0, 100)
        ax.set_xlabel("%")
    axes[0][0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as a PNG with no software stamp (the same bytes every run) and close it."""
    import matplotlib.pyplot as plt  # lazy: only the plots need matplotlib (already imported by them)

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def write_report(runs: Sequence[str | Path] | Mapping[str, str | Path], out_md: str | Path,
                 out_png: str | Path | None = None, *, notes: str = "") -> pd.DataFrame:
    """Collect the runs, write the markdown report (and the plot); returns the long frame."""
    frame = collect(runs)
    if frame.empty:
        raise ValueError("no metrics.json with set metrics found in the runs given")
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(frame, notes=notes)
    if out_png is not None:
        plot(frame, out_png)
        text += f"\n![accuracy per set]({Path(out_png).name})\n"
    out_md.write_text(text, encoding="utf-8")
    return frame


# ----------------------------------------------------------------------------- over seeds


def seed_summary(groups: Mapping[str, Sequence[str | Path]]) -> pd.DataFrame:
    """One row per (group, set): seeds, n, mean and 95 % half-width of accuracy and macro-F1, mean
    fallback rate (in %); `groups` = {label: [run folders, one per seed]}, in row order."""
    rows = []
    for label, runs in groups.items():
        frame = collect([Path(r) for r in runs])
        if frame.empty:
            continue
        for set_name in set_order(frame):
            part = frame[frame["set"] == set_name]
            acc, f1 = part["accuracy"].tolist(), part["macro_f1"].tolist()
            rows.append({"group": label, "model": part["model"].iloc[0], "setting": part["setting"].iloc[0],
                         "set": set_name, "seeds": len(part), "n": int(part["n"].max()),
                         "accuracy": float(np.mean(acc)), "accuracy_ci": ci_half_width(acc),
                         "macro_f1": float(np.mean(f1)), "macro_f1_ci": ci_half_width(f1),
                         "fallback": float(part["fallback"].mean()) if part["fallback"].notna().any() else np.nan})
    return pd.DataFrame(rows, columns=["group", "model", "setting", "set", "seeds", "n", "accuracy", "accuracy_ci",
                                       "macro_f1", "macro_f1_ci", "fallback"])


def _pm(mean: float, ci: float) -> str:
    if np.isnan(mean):
        return "–"
    return f"{mean:.1f}" if np.isnan(ci) else f"{mean:.1f} ± {ci:.1f}"


def seed_markdown(summary: pd.DataFrame, title: str, notes: str = "") -> str:
    """The report over seeds: accuracy (mean ± 95 % half-width) per group and set, then macro-F1,
    then the crop fallback rates."""
    sets = list(dict.fromkeys(summary["set"]))
    sets = sorted(sets, key=lambda s: s != "test")
    groups = list(dict.fromkeys(summary["group"]))

    def cell(group: str, set_name: str, column: str) -> str:
        hit = summary[(summary["group"] == group) & (summary["set"] == set_name)]
        if hit.empty:
            return "–"
        row = hit.iloc[0]
        if column == "fallback":
            return "–" if np.isnan(row["fallback"]) else f"{row['fallback']:.1f}"
        return _pm(row[column], row[f"{column}_ci"])

    def table(column: str) -> list[str]:
        lines = ["| " + " | ".join(["model / setting", "seeds", *sets]) + " |", "|:---|---:|" + "---:|" * len(sets)]
        for g in groups:
            rows = summary[summary["group"] == g]
            seeds, model, setting = int(rows["seeds"].max()), rows["model"].iloc[0], rows["setting"].iloc[0]
            label = f"{g} ({setting})" if g == model and setting != "baseline" else g   # a bare model name
            lines.append("| " + " | ".join([label, str(seeds), *(cell(g, s, column) for s in sets)]) + " |")
        return lines

    sizes = summary.groupby("set", sort=False)["n"].max()
    lines = [f"# {title}", "", *([notes.strip(), ""] if notes.strip() else []),
             "Accuracy in % (mean ± 95 % Student-t half-width over the seeds):", "", *table("accuracy"), "",
             "Macro-F1 in %:", "", *table("macro_f1"), "",
             "Crop fallback rate in % (images whose crop did not take the model's own path: `rbc` -> `cell` "
             "when fewer than 3 red cells were measured, -> `centre` when no cell was found; – for models "
             "without a crop):", "", *table("fallback"), "",
             "Images per set: " + ", ".join(f"{s} {int(sizes[s])}" for s in sets) + "."]
    return "\n".join(lines) + "\n"


def seed_plot(summary: pd.DataFrame, path: str | Path) -> Path:
    """Bars with 95 % intervals: accuracy per group, one panel per set."""
    import matplotlib  # lazy: matplotlib takes a second to import and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted(dict.fromkeys(summary["set"]), key=lambda s: s != "test")
    groups = list(dict.fromkeys(summary["group"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(2.6 * len(sets) + 2.5, 0.45 * len(groups) + 1.6), sharey=True,
                             squeeze=False)
    for ax, s in zip(axes[0], sets):
        part = summary[summary["set"] == s].set_index("group").reindex(groups)
        ax.barh(range(len(groups)), part["accuracy"].fillna(0), xerr=part["accuracy_ci"].fillna(0),
                color="tab:blue", ecolor="black", capsize=2)
        ax.set_title(s, fontsize=9)
        ax.set_xlim(0, 100)
        ax.axvline(80, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("accuracy %", fontsize=8)
    axes[0][0].set_yticks(range(len(groups)), groups, fontsize=8)
    axes[0][0].invert_yaxis()
    return _save(fig, path)


def write_seed_report(groups: Mapping[str, Sequence[str | Path]], out_md: str | Path, out_png: str | Path | None = None,
                      *, title: str = "Generalization to other labs", notes: str = "") -> pd.DataFrame:
    """`seed_summary` of the groups written as markdown (and the plot); returns the summary."""
    summary = seed_summary(groups)
    if summary.empty:
        raise ValueError("no metrics.json with set metrics found in the runs given")
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    text = seed_markdown(summary, title, notes)
    if out_png is not None:
        seed_plot(summary, out_png)
        text += f"\n![accuracy per set]({Path(out_png).name})\n"
    out_md.write_text(text, encoding="utf-8")
    return summary
