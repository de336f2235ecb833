"""Stage `report`: the result table over models and seeds (mean, 95 % confidence interval), the
per-seed table, the interval plot, reports/metrics.json (the headline model) and the generalization
report (every model on the test split, the stress sets and the declared external sets, with the
crop fallback rates; `wbc.results.generalization.write_seed_report`).

dvc.yaml writes the paths; params: model, compare, seeds.
"""
from __future__ import annotations

import argparse

from pathlib import Path

from wbc.core.params import load_params, run_stage
from wbc.results.generalization import write_seed_report
from wbc.results.report import write_results
from wbc.learn.zoo import check_table, table_runs

NOTES = ("The pipeline's own models (the result table's, trained on this run's training split) on its test "
         "split, on each stress set (stage `stress`: the test split as other labs would hand it over, never "
         "trained on) and on every set declared in `evaluate.external`; each model's setting (crop, "
         "stain augmentation, test-time levers) is in brackets where it is not the baseline's. Measured on real PBC against LISC: "
         "reports/generalization_pbc.md.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--evaluate", "--out", "--metrics", "--generalization"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    params = load_params()
    model, compare, seeds = check_table(params.get("model"), params.get("compare"), params.get("seeds"))
    runs = table_runs(model, compare, seeds)
    table = write_results(args.evaluate, runs, model, seeds, args.out, args.metrics)
    out_md = Path(args.generalization)
    groups = {name: [Path(args.evaluate) / run for run in folders] for name, folders in runs.items()}
    write_seed_report(groups, out_md, out_md.with_suffix(".png"), notes=NOTES)
    print(f"report: {table['model'].nunique()} model(s) x {len(seeds)} seed(s) x {table['set'].nunique()} "
          f"test set(s) -> {args.out}/results.md, {args.metrics}")
    print(f"report: generalization over {len(groups)} model(s) -> {out_md}")
    return 0


if __name__ == "__main__":
    run_stage("report", main)
