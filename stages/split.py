"""Stage `split`: merge the kept images of all sources, split them (stratified or the sources' own
split), audit cross-split duplicates, pack tensors and write the distribution reports.

Params: data.profile, split, dedup (the audit's duplicate test).  Outputs: see dvc.yaml.
"""
from __future__ import annotations

import sys
from pathlib import Path

from wbc import split
from wbc.cellcrop import DEFAULT_SPAN
from wbc.params import load_params, run_stage

KEPT = Path("data/interim/kept.csv")
STORE = Path("data/interim/store")
SPLITS = Path("data/processed/splits.csv")
PACKED = Path("data/processed/packed")
REPORTS = Path("reports/split")


def main() -> int:
    params = load_params()
    sp, dedup = params["split"], params.get("dedup", {})
    summary = split.run_split(
        KEPT, STORE, splits_csv=SPLITS, packed_dir=PACKED, reports_dir=REPORTS,
        mode=sp.get("mode", "stratified"), val=sp.get("val"), test=sp.get("test"), seed=sp.get("seed", 42),
        image_size=sp.get("image_size", 64), profile=params["data"]["profile"],
        dedup_params=dedup, workers=dedup.get("workers", 0),
        crop=sp.get("crop", "centre"), cell_fraction=sp.get("cell_fraction", 0.6),
        rbc_span=sp.get("rbc_span", DEFAULT_SPAN),
    )
    totals = ", ".join(f"{name} {n:,}" for name, n in summary["totals"].items())
    print(f"split: {summary['images']:,} images: {totals}; "
          f"{summary['audit']['cross_split_duplicates']} cross-split duplicate pair(s)")
    warning = split.leakage_warning(summary)
    if warning:
        print(f"split: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_stage("split", main)
