"""Stage `report`: the result table over models and seeds (mean, 95 % confidence interval), the
per-seed table, the interval plot and reports/metrics.json (the headline model).

dvc.yaml writes the paths; params: model, compare, seeds.
"""
from __future__ import annotations

import argparse

from wbc.core.params import load_params, run_stage
from wbc.results.report import write_results
from wbc.learn.zoo import check_table, table_runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--evaluate", "--out", "--metrics"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    params = load_params()
    model, compare, seeds = check_table(params.get("model"), params.get("compare"), params.get("seeds"))
    table = write_results(args.evaluate, table_runs(model, compare, seeds), model, seeds, args.out, args.metrics)
    print(f"report: {table['model'].nunique()} model(s) x {len(seeds)} seed(s) x {table['set'].nunique()} "
          f"test set(s) -> {args.out}/results.md, {args.metrics}")
    return 0


if __name__ == "__main__":
    run_stage("report", main)
