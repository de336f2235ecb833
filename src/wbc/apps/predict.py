"""Predicting image files with any trained model (`wbc predict`) and the differential count.

- `predict_files`: images given as files, folders (recursive, image suffixes only) and zip
  archives (`wbc.dataset.inputs`: read with the ingest path's archive limits and decompression-bomb
  guard; members named `archive.zip:member`). Each decoded image becomes the model's input by the
  predictor's own `prepare` (`wbc.results.predictors`: a CNN squares and resizes it as at packing time,
  the feature-based model computes its features at the image's own resolution). Unreadable or
  hostile inputs do not stop the run: they get a row with an `error` and no prediction.
- `differential_count`: count and percentage per class with a 95 % Wilson score interval.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from tqdm import tqdm

from wbc.cells.cellcrop import PATHS
from wbc.dataset.inputs import InputItem, InputLimits, collect_inputs, iter_images
from wbc.results.predictors import Predictor

#: Confidence level of the differential-count intervals.
CONFIDENCE = 0.95


def predict_files(
    predictor: Predictor,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    limits: InputLimits | Mapping[str, Any] | None = None,
    adapt: bool = False,
) -> pd.DataFrame:
    """Predict every image under `paths` -> one row per input, in `collect_inputs` order.

    Columns: `path`, `label`, `confidence`, `p_<class>` per model class, `crop` (the crop path the
    image took, `wbc.cells.cellcrop.PATHS`: the model's own, or a fallback; empty for the feature
    model and unread images), `error` (empty when the image was read; otherwise
    label/confidence/probabilities are empty). `adapt`: every image is prepared first and the model
    adapted to them (`predictor.adapted`: AdaBN for a CNN loaded with adapt="adabn" or "balanced"), then predicted.
    `frame.attrs["cell_crop_fallback"]`: images whose crop fell back; `frame.attrs["crop_paths"]`:
    the count of each path.
    """
    if adapt:
        return _predict_adapted(predictor, paths, batch_size, limits)
    classes = predictor.classes
    items = collect_inputs(paths, limits)
    probs = np.full((len(items), len(classes)), np.nan, dtype=np.float64)
    errors, crops = [""] * len(items), [""] * len(items)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            probs[[i for i, _ in pending]] = predictor.predict(np.stack([a for _, a in pending]), batch_size=len(pending))
            pending.clear()

    reader = iter_images(items, limits)
    for i, (_item, image, err) in enumerate(tqdm(reader, total=len(items), desc="predict", unit="img", disable=None)):
        if image is None:
            errors[i] = err
            continue
        arr, crops[i] = prepare(predictor, image)
        pending.append((i, arr))
        if len(pending) >= batch_size:
            flush()
    flush()
    return _prediction_frame(items, probs, errors, classes, crops, getattr(predictor, "crop", None))


def prepare(predictor: Predictor, image: Any) -> tuple[np.ndarray, str]:
    """(model input, crop path taken) of one image; the path is "" for models without a crop."""
    before = dict(getattr(predictor, "paths", {}))
    arr = predictor.prepare(image)
    taken = [p for p, n in getattr(predictor, "paths", {}).items() if n != before.get(p, 0)]
    return arr, (taken[0] if taken else "")


def _predict_adapted(predictor: Predictor, paths: Sequence[str | Path], batch_size: int,
                     limits: InputLimits | Mapping[str, Any] | None) -> pd.DataFrame:
    """`predict_files` with the model adapted to all the images read (two passes: prepare, predict)."""
    items = collect_inputs(paths, limits)
    probs = np.full((len(items), len(predictor.classes)), np.nan, dtype=np.float64)
    errors, crops, done, inputs = [""] * len(items), [""] * len(items), [], []
    for i, (_item, image, err) in enumerate(tqdm(iter_images(items, limits), total=len(items), desc="read",
                                                 unit="img", disable=None)):
        if image is None:
            errors[i] = err
        else:
            done.append(i)
            arr, crops[i] = prepare(predictor, image)
            inputs.append(arr)
    if inputs:
        x = np.stack(inputs)
        probs[done] = predictor.adapted(x, batch_size=batch_size).predict(x, batch_size=batch_size)
    return _prediction_frame(items, probs, errors, predictor.classes, crops, getattr(predictor, "crop", None))


def predictions_csv(frame: pd.DataFrame) -> str:
    """The predictions CSV text (`wbc predict --out`, the web page's download): 6-decimal floats."""
    return frame.to_csv(index=False, float_format="%.6f", lineterminator="\n")


def _prediction_frame(items: Sequence[InputItem], probs: np.ndarray, errors: list[str], classes: list[str],
                      crops: list[str], spec: Any = None) -> pd.DataFrame:
    ok = np.array([not e for e in errors], dtype=bool)
    best = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
    frame = pd.DataFrame({
        "path": [it.name for it in items],
        "label": [classes[b] if b >= 0 else "" for b in best],
        "confidence": np.where(ok, np.nan_to_num(probs, nan=0.0).max(axis=1, initial=0.0), np.nan),
    })
    for j, cls in enumerate(classes):
        frame[f"p_{cls}"] = probs[:, j]
    frame["crop"] = crops
    frame["error"] = errors
    counts = {p: crops.count(p) for p in PATHS} if spec is not None else {}
    frame.attrs["crop_paths"] = counts
    frame.attrs["cell_crop_fallback"] = sum(n for p, n in counts.items() if p != spec.mode) if spec is not None else 0
    return frame


# --------------------------------------------------------------------------------------------
# Differential count
# --------------------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) of a binomial proportion k / n."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def differential_count(labels: Sequence[str], classes: Sequence[str], confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per class: count, percent of the predicted images, Wilson interval bounds (in percent)."""
    labels = [lab for lab in labels if lab]
    n = len(labels)
    rows = []
    for cls in classes:
        k = sum(lab == cls for lab in labels)
        low, high = wilson_interval(k, n, confidence)
        rows.append({"class": cls, "count": k, "percent": 100.0 * k / n if n else float("nan"),
                     "ci_low": 100.0 * low, "ci_high": 100.0 * high})
    return pd.DataFrame(rows, columns=["class", "count", "percent", "ci_low", "ci_high"])


def format_differential(table: pd.DataFrame, confidence: float = CONFIDENCE) -> str:
    """The differential count as aligned text lines (for the terminal)."""
    n = int(table["count"].sum())
    level = f"{100 * confidence:g} %"
    lines = [f"Differential count of {n} images ({level} CI: Wilson score interval)",
             f"{'class':<12} {'count':>6} {'percent':>8}   {level} CI"]
    for row in table.itertuples(index=False):
        lines.append(f"{row[0]:<12} {row.count:>6d} {row.percent:>7.1f}%   [{row.ci_low:5.1f}%, {row.ci_high:5.1f}%]")
    return "\n".join(lines)
