"""Stage `compare`: train every model of params `compare` on the packed train set.

Params: compare, train.  Outputs: models/compare/<model>.pt (best epoch by validation macro-F1)
and reports/train/compare/<model>/ (dvclive log: per-epoch loss, accuracy, macro-F1).
"""
from __future__ import annotations

from pathlib import Path

from wbc.params import load_params, run_stage
from wbc.train import TrainConfig, train_compare

PACKED = Path("data/processed/packed")
MODELS = Path("models/compare")
LOGS = Path("reports/train/compare")


def main() -> int:
    params = load_params()
    cfg = TrainConfig.from_params(params.get("train"))
    results = train_compare(params.get("compare"), PACKED, cfg, MODELS, LOGS)
    for name, res in results.items():
        print(f"compare: {name}: best epoch {res.best_epoch}, val macro-F1 {res.val_macro_f1:.4f} -> {res.checkpoint}")
    return 0


if __name__ == "__main__":
    run_stage("compare", main)
