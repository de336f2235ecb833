"""Stage `evaluate`: the headline checkpoint (models/model.pt, as `headline`) and every
models/compare/<name>.pt on the packed test set and each external set.

Params: model, compare, evaluate (batch_size).  Outputs: reports/evaluate/<name>/{metrics.json,
confusion_<set>.png, predictions_<set>.csv} and reports/metrics.json (the headline's metrics).
"""
from __future__ import annotations

from pathlib import Path

from wbc.params import load_params, run_stage
from wbc.predict import evaluate_all

PACKED = Path("data/processed/packed")
HEADLINE = Path("models/model.pt")
COMPARE = Path("models/compare")
OUT = Path("reports/evaluate")
METRICS = Path("reports/metrics.json")


def main() -> int:
    params = load_params()
    compare = {name: COMPARE / f"{name}.pt" for name in params.get("compare") or []}
    results = evaluate_all(HEADLINE, compare, packed_dir=PACKED, out_root=OUT, metrics_path=METRICS,
                           batch_size=int(params.get("evaluate", {}).get("batch_size", 64)))
    head = results["headline"]
    scores = "; ".join(f"{s} accuracy {m['accuracy']}, macro-F1 {m['macro_f1']}"
                       for s, m in head.items() if isinstance(m, dict))
    print(f"evaluate: {len(results)} model(s); headline {head['model']}: {scores} -> {METRICS}")
    return 0


if __name__ == "__main__":
    run_stage("evaluate", main)
