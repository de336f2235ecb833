"""Stage `evaluate@<model>-<seed>` (and `evaluate_headline@<seed>`): one model file on the packed
test set and every external set -> metrics.json, predictions and confusion matrices per set.

dvc.yaml writes every path on the command line; params: evaluate.batch_size, evaluate.adapt
(none | adabn), evaluate.stain_norm (none | reinhard), evaluate.tta, evaluate.external (folder sets,
wbc.dataset.external); every zip of the stress folder (stage stress) is a set too.
"""
from __future__ import annotations

import argparse

from wbc.results.evaluate import evaluate_predictor
from wbc.dataset.external import parse_specs
from wbc.dataset.stress import stress_specs
from wbc.core.params import load_params, run_stage
from wbc.results.predictors import load_predictor
from wbc.learn.device import select_device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--model-file", "--packed", "--features", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--external-root", default=None,
                        help="folder the evaluate.external paths are relative to (a dependency of the stage)")
    parser.add_argument("--stress", default=None, help="folder of the stress sets (stage stress): each zip is a set")
    args = parser.parse_args()
    ev = load_params().get("evaluate", {}) or {}
    predictor = load_predictor(args.model_file, device=select_device("auto"),
                               stain_norm=ev.get("stain_norm", "none"), adapt=ev.get("adapt", "none"),
                               tta=bool(ev.get("tta", False)))
    external = {**stress_specs(args.stress), **parse_specs(ev.get("external"), root=args.external_root)}
    result = evaluate_predictor(predictor, args.packed, args.out, features_dir=args.features,
                                batch_size=int(ev.get("batch_size", 64)), external=external)
    scores = "; ".join(f"{s} accuracy {m['accuracy']}, macro-F1 {m['macro_f1']}"
                       for s, m in result.items() if isinstance(m, dict) and "accuracy" in m)
    print(f"evaluate: {args.model_file} ({predictor.model_name}): {scores} -> {args.out}")
    return 0


if __name__ == "__main__":
    run_stage("evaluate", main)
