"""One training run of the result table: a model name and a seed, for either model kind.

The pipeline trains each (model, seed) pair in its own DVC stage instance (`train@<model>-<seed>`,
the headline model in `train_headline@<seed>`); this module is what such an instance, and
`wbc train`, call:
- a torchvision CNN (`wbc.learn.models.MODEL_NAMES`) is trained by `wbc.learn.train.train_model` on the packed
  tensors with the params `train` section, its seed replaced by the run's;
- `tavakoli_svm` (`wbc.learn.tavakoli`) is fitted on the cached train features (`wbc.cells.features`), with
  the run's seed; its validation scores are logged like a CNN's (`<log_dir>/metrics.json`);
- `invariant_svm` (`wbc.learn.tavakoli.InvariantSVM`) likewise, on the cached invariant features
  (`wbc.cells.invariant`, `<set>.invariant.npz`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from wbc.learn import tavakoli
from wbc.core.errors import ConfigError
from wbc.cells.features import load_features, set_file
from wbc.learn.zoo import FEATURE_MODELS, check_name


def train_run(model: str, seed: int, *, packed_dir: str | Path, features_dir: str | Path | None,
              out: str | Path, log_dir: str | Path | None, train_params: dict[str, Any] | None) -> str:
    """Train `model` with `seed`; write the model file `out` and the log folder. Returns a summary line."""
    check_name(model)
    if model in FEATURE_MODELS:
        if features_dir is None:
            raise ConfigError(f"{model} is trained on the cached features: give the features folder")
        return _fit_features(model, seed, Path(features_dir), Path(out), log_dir)
    # lazy: torch (wbc.learn.train) is not needed to fit tavakoli_svm, nor by `wbc --help`
    from wbc.learn.train import TrainConfig, train_model

    cfg = TrainConfig.from_params(train_params, seed=seed)
    res = train_model(model, packed_dir, cfg, out, log_dir=log_dir)
    return f"{model} seed {seed}: best epoch {res.best_epoch}, val macro-F1 {res.val_macro_f1:.4f} -> {res.checkpoint}"


def _fit_features(model: str, seed: int, features_dir: Path, out: Path, log_dir: str | Path | None) -> str:
    """Fit the feature-based classifier on its train features, score it on val, save it."""
    cls = tavakoli.MODELS[model]
    train_path = set_file(features_dir, "train", cls.FEATURE_KIND)
    if not train_path.is_file():
        raise ConfigError(f"{model}: no train features {train_path} (run the features stage)")
    train = load_features(train_path, names=cls.FEATURE_NAMES)
    clf = cls.fit(train["X"], train["y"], seed=seed, status=train["status"])
    val_path = set_file(features_dir, "val", cls.FEATURE_KIND)
    scores = _val_scores(clf, load_features(val_path, names=cls.FEATURE_NAMES)) if val_path.is_file() else {}
    clf.save(out)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / "metrics.json").write_text(json.dumps({"model": model, "seed": seed, **scores},
                                                               indent=2, sort_keys=True) + "\n")
    f1 = scores.get("val_macro_f1", float("nan"))
    return f"{model} seed {seed}: {len(train['X'])} train cells, val macro-F1 {f1:.4f} -> {out}"


def _val_scores(clf: Any, val: dict[str, np.ndarray]) -> dict[str, float]:
    if not len(val["X"]):
        return {}
    pred = clf.predict_proba(val["X"]).argmax(axis=1)
    y = np.asarray(val["y"])
    return {"val_acc": round(float((pred == y).mean()), 4),
            "val_macro_f1": round(float(f1_score(y, pred, average="macro", zero_division=0)), 4)}
