"""Merge the kept images of all sources into one five-class dataset and split it without leakage.

The whole split stage (used by `stages/split.py` and `wbc split`), in the order it runs:

1. `wbc.dataset.assign`: `load_kept` reads the dedup output; `assign_splits` gives every image a set
   (`stratified` or `given`, see there).
2. `wbc.dataset.audit`: `audit_leakage` re-checks every pair of images across sets with the dedup
   stage's test.
3. `wbc.dataset.pack`: `pack` writes `<set>_x.npy` / `<set>_y.npy` and `meta.json`.
4. `wbc.dataset.summary`: `summarize` and `write_reports` (summary.json, distribution.md/.png,
   samples.png).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from wbc.cells.cellcrop import DEFAULT_SPAN, CropSpec
from wbc.core.errors import WbcError
from wbc.dataset.assign import DEFAULT_FRACTION, assign_splits, load_kept, profile_split_defaults
from wbc.dataset.audit import audit_leakage, summarize_audit
from wbc.dataset.pack import VIEW_SEED, pack
from wbc.dataset.summary import summarize, write_reports

# --------------------------------------------------------------------------------------------
# The whole stage
# --------------------------------------------------------------------------------------------


def run_split(
    kept_csv: str | Path,
    store_root: str | Path,
    *,
    splits_csv: str | Path,
    packed_dir: str | Path,
    reports_dir: str | Path,
    mode: str = "stratified",
    val: Any = None,
    test: Any = None,
    seed: int = 42,
    image_size: int = 64,
    profile: str | None = None,
    dedup_params: Mapping[str, Any] | None = None,
    workers: int | None = 0,
    audit: Callable[..., pd.DataFrame] | None = None,
    crop: str = "centre",
    cell_fraction: float = 0.6,
    rbc_span: float = DEFAULT_SPAN,
    lab_views: bool = False,
) -> dict[str, Any]:
    """Split, audit, pack and report; returns the summary (also written to summary.json).

    `val`/`test` None -> the profile's defaults (`wbc.data.sources.profile_split`). `crop`/`cell_fraction`/
    `rbc_span`: `wbc.cells.cellcrop` (the summary's `crop` counts the images whose crop fell back, per set).
    `lab_views`: also pack a view of every train image as another lab might hand it over
    (`wbc.dataset.pack`, seeded by `seed`; the summary's `crop.view_paths` counts their crop paths).
    """
    spec = CropSpec(crop, cell_fraction, rbc_span)
    defaults = profile_split_defaults(profile) if val is None or test is None else {}
    val = defaults.get("val", DEFAULT_FRACTION) if val is None else val
    test = defaults.get("test", DEFAULT_FRACTION) if test is None else test
    kept = load_kept(kept_csv)
    if kept.empty:
        raise WbcError(f"{kept_csv}: no usable images (status ok, canonical label, stored)")
    assignment = assign_splits(kept, mode=mode, val=val, test=test, seed=seed)
    pairs = (audit or audit_leakage)(assignment, kept, store_root, dedup_params)
    splits_csv = Path(splits_csv)
    splits_csv.parent.mkdir(parents=True, exist_ok=True)
    assignment.frame.to_csv(splits_csv, index=False, lineterminator="\n")
    meta = pack(assignment, kept, store_root, packed_dir, image_size, workers=workers, crop=spec,
                view_seed=VIEW_SEED + int(seed) if lab_views else None)
    summary = summarize(assignment, len(kept), summarize_audit(pairs))
    summary["image_size"] = int(image_size)
    summary["crop"] = {**spec.to_dict(), "fallback": meta["cell_fallback"],
                       **({"paths": meta["crop_paths"]} if "crop_paths" in meta else {}),
                       **({"view_paths": meta["view_crop_paths"]} if lab_views else {})}
    write_reports(summary, assignment, kept, store_root, reports_dir, seed=seed)
    return summary


def leakage_warning(summary: Mapping[str, Any]) -> str:
    """A one-line warning when a stratified split has cross-split duplicates (else "")."""
    n = int(summary.get("audit", {}).get("cross_split_duplicates", 0))
    if n == 0 or summary.get("mode") != "stratified":
        return ""
    by_sets = ", ".join(f"{k}: {v}" for k, v in summary["audit"]["by_sets"].items())
    return f"{n} duplicate pair(s) across sets ({by_sets}); run dedup first (see reports/split/summary.json)"


def parse_size_arg(text: str | None) -> int | float | None:
    """CLI helper: '3200' -> 3200, '0.15' -> 0.15, None -> None."""
    if text is None:
        return None
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value
