"""The Results page's content, discovered in the workspace's reports/ folder (nothing hard-coded).

- `results.md` (and any other Markdown report) rendered to HTML by markdown-it-py (CommonMark +
  tables, raw HTML escaped, unsafe link schemes refused).
- Figures: every PNG/JPEG/GIF/WebP file under reports/, grouped by folder: reports/ itself first
  (group ""), then folders in the pipeline's stage order of dvc.yaml (`dedup` before `split` ...),
  the rest alphabetically.
- Training curves: every dvclive run (a `<run>/plots/metrics/` folder of TSV files), as series
  grouped by metric name (`train/acc` and `val/acc` share the `acc` chart).
- `figure_path(reports, rel)`: the file a /reports/... URL may serve (inside reports/, an image).
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from markdown_it import MarkdownIt

#: File suffixes shown as figures (and the only files /reports/... serves).
FIGURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
#: The main result table.
RESULTS_MD = "results.md"
#: Where dvclive keeps a run's per-step TSVs, below the run folder.
DVCLIVE_METRICS = ("plots", "metrics")


def render_markdown(text: str) -> str:
    """Markdown -> HTML (CommonMark with tables; raw HTML in the source is shown as text)."""
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def stage_order(workspace: Path) -> list[str]:
    """Stage names of the workspace's dvc.yaml in pipeline order ([] when absent or unreadable)."""
    try:
        stages = (yaml.safe_load((workspace / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    return [str(name) for name in stages] if isinstance(stages, dict) else []


def _group_key(group: str, order: list[str]) -> tuple[int, str]:
    """Top-level figures first (e.g. the result table's plot), then folders in stage order."""
    head = group.split("/", 1)[0]
    return (-1 if not group else order.index(head) if head in order else len(order), group)


def markdown_reports(reports: Path) -> list[dict[str, str]]:
    """Every Markdown file under reports/ except results.md: {path, html}, sorted by path."""
    out = []
    for path in sorted(reports.rglob("*.md")):
        rel = path.relative_to(reports).as_posix()
        if rel != RESULTS_MD and path.is_file():
            out.append({"path": rel, "html": render_markdown(path.read_text(encoding="utf-8", errors="replace"))})
    return out


def figures(reports: Path, order: list[str]) -> list[dict[str, Any]]:
    """Image files under reports/ grouped by folder: [{group, images: [{name, path}]}]."""
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for path in sorted(reports.rglob("*")):
        if path.suffix.lower() in FIGURE_SUFFIXES and path.is_file():
            rel = path.relative_to(reports).as_posix()
            folder = str(PurePosixPath(rel).parent)
            groups["" if folder == "." else folder].append({"name": path.name, "path": rel})
    return [{"group": g, "images": groups[g]} for g in sorted(groups, key=lambda g: _group_key(g, order))]


def read_tsv_series(path: Path) -> dict[str, list[float]] | None:
    """A dvclive TSV (`step`, value column, maybe `timestamp`) -> {steps, values}; None when unusable."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    columns = [c for c in (rows[0].keys() if rows else []) if c not in ("step", "timestamp")]
    if not columns or "step" not in rows[0]:
        return None
    column = path.stem if path.stem in columns else columns[-1]
    steps, values = [], []
    for row in rows:
        try:
            step, value = float(row["step"]), float(row[column])
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            steps.append(step)
            values.append(value)
    return {"steps": steps, "values": values} if steps else None


def _run_charts(metrics_dir: Path) -> list[dict[str, Any]]:
    """One run's charts: TSVs grouped by file stem, series named by their folder (train, val, ...)."""
    charts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tsv in sorted(metrics_dir.rglob("*.tsv")):
        series = read_tsv_series(tsv)
        if series is not None:
            name = tsv.parent.relative_to(metrics_dir).as_posix()
            charts[tsv.stem].append({"name": "" if name == "." else name, **series})
    return [{"metric": m, "series": charts[m]} for m in sorted(charts)]


def training_curves(reports: Path) -> list[dict[str, Any]]:
    """Every dvclive run under reports/: [{run, charts: [{metric, series: [{name, steps, values}]}]}]."""
    runs = []
    for metrics_dir in sorted(reports.rglob("/".join(DVCLIVE_METRICS))):
        if metrics_dir.is_dir():
            charts = _run_charts(metrics_dir)
            if charts:
                runs.append({"run": metrics_dir.parent.parent.relative_to(reports).as_posix(), "charts": charts})
    return runs


def results_payload(reports: Path, workspace: Path) -> dict[str, Any]:
    """Everything the Results page shows, as JSON-ready data."""
    if not reports.is_dir():
        return {"reports": str(reports.resolve()), "found": False, "results_html": None,
                "markdown": [], "figures": [], "curves": []}
    table = reports / RESULTS_MD
    return {
        "reports": str(reports.resolve()),
        "found": True,
        "results_html": render_markdown(table.read_text(encoding="utf-8", errors="replace")) if table.is_file() else None,
        "markdown": markdown_reports(reports),
        "figures": figures(reports, stage_order(workspace)),
        "curves": training_curves(reports),
    }


def figure_path(reports: Path, rel: str) -> Path | None:
    """The image file a /reports/<rel> URL names, or None (not below reports/, not an image, missing).

    The check is on the name (no absolute path, no `..`), so figures that DVC links into reports/
    from its cache are still served.
    """
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or "\\" in rel or any(p in ("..", ".") for p in parts):
        return None
    path = reports.joinpath(*parts)
    return path if path.suffix.lower() in FIGURE_SUFFIXES and path.is_file() else None
