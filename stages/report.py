"""Stage `report`: reports/results.md and reports/results.csv (the paper's Table 8/9 layout)
from reports/evaluate/<name>/metrics.json.

Params: model, compare.  Outputs: reports/results.md, reports/results.csv.
"""
from __future__ import annotations

from pathlib import Path

from wbc.params import load_params, run_stage
from wbc.report import write_results

EVALUATE = Path("reports/evaluate")
MD = Path("reports/results.md")
CSV = Path("reports/results.csv")


def main() -> int:
    params = load_params()
    table = write_results(EVALUATE, params["model"], params.get("compare") or [], MD, CSV)
    print(f"report: {table['model'].nunique()} model(s) x {table['set'].nunique()} test set(s) -> {MD}, {CSV}")
    return 0


if __name__ == "__main__":
    run_stage("report", main)
