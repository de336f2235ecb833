"""Stage `evaluate@<model>-<seed>` (and `evaluate_headline@<seed>`): one model file on the packed
test set and every external set -> metrics.json, predictions and confusion matrices per set.

dvc.yaml writes every path on the command line; params: evaluate.batch_size.
"""
from __future__ import annotations

import argparse

from wbc.evaluate import evaluate_predictor
from wbc.params import load_params, run_stage
from wbc.predictors import load_predictor
from wbc.train import select_device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--model-file", "--packed", "--features", "--out"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    predictor = load_predictor(args.model_file, device=select_device("auto"))
    batch_size = int(load_params().get("evaluate", {}).get("batch_size", 64))
    result = evaluate_predictor(predictor, args.packed, args.out, features_dir=args.features, batch_size=batch_size)
    scores = "; ".join(f"{s} accuracy {m['accuracy']}, macro-F1 {m['macro_f1']}"
                       for s, m in result.items() if isinstance(m, dict))
    print(f"evaluate: {args.model_file} ({predictor.model_name}): {scores} -> {args.out}")
    return 0


if __name__ == "__main__":
    run_stage("evaluate", main)
