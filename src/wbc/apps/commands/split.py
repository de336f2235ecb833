"""`wbc split`: merge kept images into one five-class dataset, split it without leakage, pack tensors."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wbc.dataset import split
from wbc.dataset.assign import DEFAULT_FRACTION as SPLIT_FRACTION, MODES
from wbc.cells.cellcrop import CROPS, DEFAULT_FRACTION, DEFAULT_SPAN

HELP = "split kept images (dedup output) into train/val/test (+ external sets), audit leakage, pack tensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("kept_csv", metavar="KEPT_CSV", help="manifest rows kept by dedup (e.g. data/interim/kept.csv)")
    parser.add_argument("--store", required=True, metavar="DIR", help="image store folder of the manifest")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: splits.csv, packed/ and reports/ are written there")
    parser.add_argument("--mode", choices=MODES, default="stratified",
                        help="stratified (merge pools, stratified val/test) or given (sources' own split)")
    parser.add_argument("--val", default=None, help="val size: a count (3200) or a fraction (0.15)")
    parser.add_argument("--test", default=None, help="test size: a count or a fraction (ignored in given mode)")
    parser.add_argument("--profile", default=None,
                        help="data profile whose default val/test sizes apply when --val/--test are omitted "
                             f"(else {SPLIT_FRACTION})")
    parser.add_argument("--seed", type=int, default=42, help="split seed (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="packed image side in px (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes, 0 = all cores")
    parser.add_argument("--crop", choices=CROPS, default="centre",
                        help="centre square, a square centred on the white cell (cell), or centred on it and "
                             "scaled by the red cells (rbc; wbc.cells.cellcrop; default: %(default)s)")
    parser.add_argument("--cell-fraction", type=float, default=DEFAULT_FRACTION,
                        help="--crop cell: the cell spans this fraction of the crop side (default: %(default)s)")
    parser.add_argument("--rbc-span", type=float, default=DEFAULT_SPAN,
                        help="--crop rbc: the crop side in red-cell diameters (default: %(default)s)")
    parser.add_argument("--lab-views", action="store_true",
                        help="also pack each train image as another lab might hand it over (tight crop, low "
                             "resolution, JPEG; wbc.cells.labshift), through the same crop: train_view_x.npy")


def run(args: argparse.Namespace) -> int:
    """Split, audit, pack and report; print the counts per set and the audit result."""
    out = Path(args.out)
    summary = split.run_split(
        args.kept_csv, args.store,
        splits_csv=out / "splits.csv", packed_dir=out / "packed", reports_dir=out / "reports",
        mode=args.mode, val=split.parse_size_arg(args.val), test=split.parse_size_arg(args.test),
        seed=args.seed, image_size=args.image_size, profile=args.profile,
        dedup_params={"workers": args.workers}, workers=args.workers,
        crop=args.crop, cell_fraction=args.cell_fraction, rbc_span=args.rbc_span, lab_views=args.lab_views,
    )
    totals = ", ".join(f"{name} {n:,}" for name, n in summary["totals"].items())
    print(f"{summary['images']:,} images ({summary['mode']}, seed {summary['seed']}): {totals}")
    print(f"leakage audit: {summary['audit']['cross_split_duplicates']} duplicate pair(s) across sets")
    if args.crop != "centre":
        print(f"{args.crop} crop: fallbacks per set (no cell: centre crop; no red cells: cell crop): "
              f"{summary['crop']['fallback']}")
    warning = split.leakage_warning(summary)
    if warning:
        print(f"wbc split: warning: {warning}", file=sys.stderr)
    print(f"wrote {out / 'splits.csv'}, {out / 'packed'}/, {out / 'reports'}/")
    return 0
