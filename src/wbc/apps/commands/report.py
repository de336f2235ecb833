"""`wbc report`: the result table over models and seeds from the evaluation folders."""
from __future__ import annotations

import argparse

HELP = "the result table (mean and 95 %% CI over seeds, the paper's layout), per-seed CSV, plot and metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("--evaluate", default="reports/evaluate", metavar="DIR",
                        help="evaluation folders <model>-<seed>/ and headline-<seed>/ (default: %(default)s)")
    parser.add_argument("--out", default="reports", metavar="DIR", help="where results.{md,csv,png} go (default: %(default)s)")
    parser.add_argument("--metrics", default="reports/metrics.json", metavar="JSON", help="(default: %(default)s)")
    parser.add_argument("--params", default="params.yaml", help="params file: model, compare, seeds (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Aggregate and write the tables."""
    from wbc.core.params import load_params  # lazy: `wbc --help` imports every command; the report needs pandas
    from wbc.results.report import write_results
    from wbc.learn.zoo import check_table, table_runs

    params = load_params(args.params)
    model, compare, seeds = check_table(params.get("model"), params.get("compare"), params.get("seeds"))
    table = write_results(args.evaluate, table_runs(model, compare, seeds), model, seeds, args.out, args.metrics)
    print(f"{table['model'].nunique()} model(s) x {len(seeds)} seed(s) -> {args.out}/results.md, {args.metrics}")
    return 0
