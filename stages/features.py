"""Stage `features`: the 51 features of the feature-based method (Tavakoli et al.) and the
stain-invariant features of `invariant_svm` (`wbc.cells.invariant`) for every image of every set,
from the original-resolution images of the store -> `<set>.npz` and `<set>.invariant.npz` per set,
the degenerate-cell counts and the segmentation figure.

dvc.yaml writes every path on the command line; params: features.workers (speed only, not a dependency).
"""
from __future__ import annotations

import argparse

from wbc.cells.featurize import featurize_sets
from wbc.core.params import load_params, run_stage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--splits", "--kept", "--store", "--out", "--reports"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    workers = int((load_params().get("features") or {}).get("workers", 0))
    summary = featurize_sets(args.splits, args.kept, args.store, args.out, args.reports, workers=workers)
    for name, s in summary.items():
        flags = ", ".join(f"{k} {v}" for k, v in s["status"].items() if k != "ok") or "none"
        print(f"features: {name}: {s['images']} images; degenerate: {flags}")
    return 0


if __name__ == "__main__":
    run_stage("features", main)
