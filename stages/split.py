"""Stage `split`: merge the kept images of all sources, split them (stratified or the sources' own
split), audit cross-split duplicates, pack tensors and write the distribution reports.

Params: data.profile, split, dedup (the audit's duplicate test).  dvc.yaml passes every path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wbc.dataset import split
from wbc.cells.cellcrop import DEFAULT_SPAN
from wbc.core.params import load_params, run_stage

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--kept", "--store", "--splits", "--packed", "--reports"):
        parser.add_argument(flag, type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    sp, dedup = params["split"], params.get("dedup", {})
    summary = split.run_split(
        args.kept, args.store, splits_csv=args.splits, packed_dir=args.packed, reports_dir=args.reports,
        mode=sp.get("mode", "stratified"), val=sp.get("val"), test=sp.get("test"), seed=sp.get("seed", 42),
        image_size=sp.get("image_size", 64), profile=params["data"]["profile"],
        dedup_params=dedup, workers=dedup.get("workers", 0),
        crop=sp.get("crop", "centre"), cell_fraction=sp.get("cell_fraction", 0.6),
        rbc_span=sp.get("rbc_span", DEFAULT_SPAN), lab_views=bool(sp.get("lab_views", False)),
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
