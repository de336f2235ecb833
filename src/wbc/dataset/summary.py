"""The split's reports: summary.json, the class-distribution table and plot, sample images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from wbc import LABELS
from wbc.data.plots import class_samples
from wbc.dataset.assign import Assignment

# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def summarize(assignment: Assignment, kept_rows: int, audit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """summary.json: counts per set x class x source, per set x class, totals, targets, audit."""
    frame = assignment.frame
    counts: dict[str, dict[str, dict[str, int]]] = {}
    per_class: dict[str, dict[str, int]] = {}
    for name in assignment.sets:
        sub = frame[frame["split"] == name]
        per_class[name] = {lab: int((sub["label"] == lab).sum()) for lab in LABELS}
        counts[name] = {
            lab: {src: int(n) for src, n in sub[sub["label"] == lab]["source"].value_counts().sort_index().items()}
            for lab in LABELS
        }
    summary: dict[str, Any] = {
        "mode": assignment.mode,
        "seed": assignment.seed,
        "requested": {"val": assignment.val, "test": assignment.test},
        "targets": assignment.targets,
        "kept_rows": int(kept_rows),
        "images": int(len(frame)),
        "totals": {name: int((frame["split"] == name).sum()) for name in assignment.sets},
        "per_class": per_class,
        "counts": counts,
    }
    if audit is not None:
        summary["audit"] = dict(audit)
    return summary


def distribution_markdown(summary: Mapping[str, Any]) -> str:
    """A class-distribution table: count and percentage of each class per set, then totals."""
    sets = list(summary["totals"])
    head = "| class | " + " | ".join(sets) + " | all |"
    lines = [
        f"# Class distribution ({summary['mode']} split, seed {summary['seed']})", "",
        "Count and percentage of the set's images per class.", "",
        head, "|---|" + "---:|" * (len(sets) + 1),
    ]
    grand = sum(summary["totals"].values())
    for lab in LABELS:
        cells = [_pct(summary["per_class"][s][lab], summary["totals"][s]) for s in sets]
        n_all = sum(summary["per_class"][s][lab] for s in sets)
        lines.append(f"| {lab} | " + " | ".join(cells) + f" | {_pct(n_all, grand)} |")
    totals = [f"**{summary['totals'][s]:,}**" for s in sets]
    lines.append("| **total** | " + " | ".join(totals) + f" | **{grand:,}** |")
    lines += ["", "## Per source", "", "| set | class | " + " | ".join(_sources(summary)) + " |",
              "|---|---|" + "---:|" * len(_sources(summary))]
    for s in sets:
        for lab in LABELS:
            row = [str(summary["counts"][s][lab].get(src, 0)) for src in _sources(summary)]
            lines.append(f"| {s} | {lab} | " + " | ".join(row) + " |")
    if "audit" in summary:
        lines += ["", f"Leakage audit: {summary['audit']['cross_split_duplicates']} duplicate pair(s) across sets."]
    return "\n".join(lines) + "\n"


def _pct(n: int, total: int) -> str:
    return f"{n:,} ({100.0 * n / total:.1f}%)" if total else "0 (0.0%)"


def _sources(summary: Mapping[str, Any]) -> list[str]:
    return sorted({src for by_lab in summary["counts"].values() for srcs in by_lab.values() for src in srcs})


def plot_distribution(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bar chart: images per class, one bar per set (matplotlib, Agg)."""
    import matplotlib  # lazy: matplotlib takes a second to import and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sets = list(summary["totals"])
    width = 0.8 / max(len(sets), 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, s in enumerate(sets):
        xs = np.arange(len(LABELS)) + (i - (len(sets) - 1) / 2) * width
        bars = ax.bar(xs, [summary["per_class"][s][lab] for lab in LABELS], width, label=f"{s} ({summary['totals'][s]:,})")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(LABELS)), LABELS)
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution per set ({summary['mode']} split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_samples(
    assignment: Assignment, kept: pd.DataFrame, store_root: str | Path, path: str | Path, *, per_class: int = 6,
    seed: int = 0,
) -> Path:
    """A grid of `per_class` random training images per class (seeded, from the image store)."""
    train_ids = assignment.frame.loc[assignment.frame["split"] == "train", "id"]
    train = kept[kept["id"].isin(train_ids)]
    return class_samples(train, store_root, path, per_class=per_class, seed=seed,
                         title="Random training images per class")


def write_reports(summary: Mapping[str, Any], assignment: Assignment, kept: pd.DataFrame, store_root: str | Path,
                  reports_dir: str | Path, *, seed: int) -> None:
    """summary.json, distribution.md, distribution.png, samples.png."""
    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "distribution.md").write_text(distribution_markdown(summary), encoding="utf-8")
    plot_distribution(summary, out / "distribution.png")
    plot_samples(assignment, kept, store_root, out / "samples.png", seed=seed)
