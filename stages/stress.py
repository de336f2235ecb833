"""Stage `stress`: the test split's images as other labs would hand them over (tight crops without red
cells, 80-120 px, JPEG, another white balance, all together), one zip of class folders per kind, for
the evaluate stages (`wbc.dataset.stress`); never trained on.

dvc.yaml writes every path on the command line; params: stress (seed, kinds).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from wbc.core.params import load_params, run_stage
from wbc.dataset.assign import load_kept
from wbc.dataset.stress import build_stress_sets, test_rows, write_summary
from wbc.dataset.stress_plot import stress_figure
from wbc.cells.labshift import KINDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--splits", "--kept", "--store", "--out", "--reports"):
        parser.add_argument(flag, type=Path, required=True)
    args = parser.parse_args()
    params = load_params().get("stress") or {}
    kinds, seed = list(params.get("kinds") or KINDS), int(params.get("seed", 0))
    rows = test_rows(args.splits, load_kept(args.kept))
    summary = build_stress_sets(rows, args.store, args.out, kinds=kinds, seed=seed)
    write_summary(summary, args.reports)
    stress_figure(rows, args.store, args.reports / "samples.png", kinds, seed)
    sets = ", ".join(f"{name} {s['images']}" for name, s in summary["sets"].items())
    print(f"stress: {summary['images']} test images -> {sets} ({len(summary['unreadable'])} unreadable) -> {args.out}")
    return 0


if __name__ == "__main__":
    run_stage("stress", main)
