"""Stage `train`: the headline model (params `model`) -> models/model.pt, reports/train/headline/.

When the model is also in `compare`, its compare checkpoint and dvclive log are copied instead of
training it a second time. Params: model, compare, train.
"""
from __future__ import annotations

import sys
from pathlib import Path

from wbc.errors import WbcError
from wbc.params import load_params
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
    try:
        sys.exit(main())
    except WbcError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        sys.exit(2)
