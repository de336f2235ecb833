"""`wbc stress`: stress sets from a split's test images (the `stress` stage)."""
from __future__ import annotations

import argparse

HELP = ("stress sets: the test split's images as other labs would hand them over (tight crops, "
        "80-120 px, JPEG, another white balance), one zip of class folders per kind")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("--splits", default="data/processed/splits.csv", help="(default: %(default)s)")
    parser.add_argument("--kept", default="data/interim/kept.csv", help="(default: %(default)s)")
    parser.add_argument("--store", default="data/interim/store", help="(default: %(default)s)")
    parser.add_argument("--out", default="data/processed/stress", help="(default: %(default)s)")
    parser.add_argument("--set", default="test", help="which set of the split to degrade (default: %(default)s)")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="stress kinds (default: all: tight lowres jpeg white_balance combined)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-image draws (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Write the zips; print the counts."""
    # lazy: `wbc --help` imports every command; this one needs OpenCV and pandas
    from wbc.cells.labshift import KINDS
    from wbc.dataset.assign import load_kept
    from wbc.dataset.stress import build_stress_sets, test_rows

    rows = test_rows(args.splits, load_kept(args.kept), split=args.set)
    summary = build_stress_sets(rows, args.store, args.out, kinds=args.kinds or KINDS, seed=args.seed)
    for name, s in summary["sets"].items():
        print(f"{name}: {s['images']} images -> {args.out}/{s['file']}")
    if summary["unreadable"]:
        print(f"unreadable (left out): {len(summary['unreadable'])}, e.g. {summary['unreadable'][0]}")
    return 0
