"""Stage `train`: the headline model (params `model`) -> models/model.pt, reports/train/headline/.

When the model is also in `compare`, its compare checkpoint and dvclive log are copied instead of
training it a second time. Params: model, compare, train.
"""
from __future__ import annotations

from pathlib import Path

from wbc.params import load_params, run_stage
from wbc.train import TrainConfig, train_headline

PACKED = Path("data/processed/packed")
OUT = Path("models/model.pt")
LOG = Path("reports/train/headline")


def main() -> int:
    params = load_params()
    cfg = TrainConfig.from_params(params.get("train"))
    how = train_headline(str(params.get("model")), params.get("compare"), PACKED, cfg, OUT, LOG,
                         compare_models=Path("models/compare"), compare_logs=Path("reports/train/compare"))
    print(f"train: {params.get('model')} {how} -> {OUT}, log {LOG}")
    return 0


if __name__ == "__main__":
    run_stage("train", main)
