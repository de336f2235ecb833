"""`wbc features`: the feature files of the split's sets (the `features` stage)."""
from __future__ import annotations

import argparse

HELP = ("features of the feature-based methods for every image of the split, from the image store "
        "(<set>.npz: Tavakoli; <set>.invariant.npz: invariant)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("--splits", default="data/processed/splits.csv", help="(default: %(default)s)")
    parser.add_argument("--kept", default="data/interim/kept.csv", help="(default: %(default)s)")
    parser.add_argument("--store", default="data/interim/store", help="(default: %(default)s)")
    parser.add_argument("--out", default="data/processed/features", help="(default: %(default)s)")
    parser.add_argument("--reports", default="reports/features", help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="processes, 0 = all cores (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Compute and cache the features; print the degenerate-cell counts per set."""
    # lazy: `wbc --help` imports every command; this one needs OpenCV and scikit-image
    from wbc.cells.featurize import featurize_sets

    summary = featurize_sets(args.splits, args.kept, args.store, args.out, args.reports, workers=args.workers)
    for name, s in summary.items():
        print(f"{name}: {s['images']} images, status {s['status']}")
    return 0
