"""Inference with a trained checkpoint: on packed arrays (evaluation) and on image files (`wbc predict`).

- `predict_array`: batched softmax probabilities for a uint8 NCHW array (e.g. a memory-mapped
  `<set>_x.npy`), ImageNet normalisation with the checkpoint's mean/std, `torch.inference_mode`.
- `collect_inputs` / `predict_files`: images given as files, folders (recursive, image suffixes
  only) and zip archives (members read in memory, named `archive.zip:member`). Every image goes
  through the packing path: `wbc.store.decode_image` then `wbc.split.square_resize` (centre
  square crop, PIL bicubic resize to the checkpoint's image_size). Unreadable inputs do not stop
  the run: they get a row with an `error` and no prediction.
- `differential_count`: count and percentage per class with a 95 % Wilson score interval.
- `evaluate_model` / `evaluate_all`: the evaluate stage (packed test + external sets ->
  metrics.json, confusion_<set>.png, predictions_<set>.csv per model; reports/metrics.json).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest
from torch import nn
from tqdm import tqdm

from wbc.errors import ConfigError, WbcError
from wbc.inputs import InputItem, collect_inputs, read_items
from wbc.train import normalise, read_meta, select_device

#: Confidence level of the differential-count intervals.
CONFIDENCE = 0.95


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------

def normaliser(mean: Sequence[float], std: Sequence[float], device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """A function: uint8 NCHW numpy batch -> float tensor on `device`, (x / 255 - mean) / std."""
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)

    def apply(batch: np.ndarray) -> torch.Tensor:
        # memory-mapped input is read-only: torch needs a writable (copied) batch
        x = np.require(batch, dtype=np.uint8, requirements=["C", "W"])
        return normalise(torch.from_numpy(x).to(device), m, s)

    return apply


def predict_batch(model: nn.Module, batch: np.ndarray, norm: Callable[[np.ndarray], torch.Tensor]) -> np.ndarray:
    """Softmax probabilities (float32, shape (n, classes)) of one uint8 NCHW batch."""
    with torch.inference_mode():
        logits = model(norm(batch))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def predict_array(
    model: nn.Module,
    x: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    desc: str = "predict",
) -> np.ndarray:
    """Probabilities for every row of a uint8 (N, 3, S, S) array, read `batch_size` rows at a time."""
    device = torch.device(device)
    model.eval()
    norm = normaliser(mean, std, device)
    if len(x) == 0:
        raise ValueError("predict_array: no images")
    chunks = [predict_batch(model, x[start:start + batch_size], norm)
              for start in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", disable=None)]
    return np.concatenate(chunks)


def predict_files(
    model: nn.Module,
    meta: Mapping[str, Any],
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Predict every image under `paths` -> one row per input, in `collect_inputs` order.

    Columns: `path`, `label`, `confidence`, `p_<class>` per checkpoint class, `error` (empty when
    the image was read; otherwise label/confidence/probabilities are empty).
    """
    classes = list(meta["classes"])
    device = torch.device(device)
    model.eval()
    norm = normaliser(meta["mean"], meta["std"], device)
    items = collect_inputs(paths)
    probs = np.full((len(items), len(classes)), np.nan, dtype=np.float64)
    errors = [""] * len(items)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            p = predict_batch(model, np.stack([a for _, a in pending]), norm)
            probs[[i for i, _ in pending]] = p
            pending.clear()

    reader = read_items(items, int(meta["image_size"]))
    for i, (item, arr, err) in enumerate(tqdm(reader, total=len(items), desc="predict", unit="img", disable=None)):
        if arr is None:
            errors[i] = err
            continue
        pending.append((i, arr))
        if len(pending) >= batch_size:
            flush()
    flush()
    return _prediction_frame(items, probs, errors, classes)


def _prediction_frame(items: Sequence[InputItem], probs: np.ndarray, errors: list[str], classes: list[str]) -> pd.DataFrame:
    ok = np.array([not e for e in errors], dtype=bool)
    best = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
    frame = pd.DataFrame({
        "path": [it.name for it in items],
        "label": [classes[b] if b >= 0 else "" for b in best],
        "confidence": np.where(ok, np.nan_to_num(probs, nan=0.0).max(axis=1, initial=0.0), np.nan),
    })
    for j, cls in enumerate(classes):
        frame[f"p_{cls}"] = probs[:, j]
    frame["error"] = errors
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


# --------------------------------------------------------------------------------------------
# Evaluation on the packed sets (the evaluate stage)
# --------------------------------------------------------------------------------------------

def evaluation_sets(packed_meta: Mapping[str, Any]) -> list[str]:
    """`test`, then each external set, skipping empty ones."""
    sizes = packed_meta.get("sets", {})
    return [s for s in ["test", *packed_meta.get("external", [])] if sizes.get(s, 0) > 0]


def check_compatible(meta: Mapping[str, Any], packed_meta: Mapping[str, Any], name: str) -> None:
    """The checkpoint must have been trained on the packed classes and image size."""
    if list(meta["classes"]) != list(packed_meta["classes"]):
        raise ConfigError(f"{name}: checkpoint classes {meta['classes']} differ from the packed data's {packed_meta['classes']}")
    if int(meta["image_size"]) != int(packed_meta["image_size"]):
        raise ConfigError(f"{name}: checkpoint image_size {meta['image_size']} differs from the packed "
                          f"data's {packed_meta['image_size']}; re-run the training stages")


def evaluate_model(
    model: nn.Module,
    meta: Mapping[str, Any],
    packed_dir: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    title: str = "",
) -> dict[str, Any]:
    """Evaluate one model on every evaluation set; write metrics.json, confusion/predictions files.

    Returns the metrics dict: ``{"model": <model_name>, "<set>": classification_metrics(...)}``.
    """
    from wbc.metrics import classification_metrics
    from wbc.report import write_set_outputs

    packed_dir, out_dir = Path(packed_dir), Path(out_dir)
    packed_meta = read_meta(packed_dir)
    check_compatible(meta, packed_meta, title or str(out_dir))
    classes = list(packed_meta["classes"])
    result: dict[str, Any] = {"model": meta["model_name"]}
    for set_name in evaluation_sets(packed_meta):
        x = np.load(packed_dir / f"{set_name}_x.npy", mmap_mode="r")
        y = np.load(packed_dir / f"{set_name}_y.npy")
        probs = predict_array(model, x, meta["mean"], meta["std"], batch_size=batch_size,
                              device=device, desc=f"{title or meta['model_name']} {set_name}")
        y_pred = probs.argmax(axis=1)
        metrics = classification_metrics(y, y_pred, classes)
        write_set_outputs(out_dir, set_name, y, y_pred, classes, metrics,
                          title=f"{title or meta['model_name']}: {set_name} (n = {len(y)})")
        result[set_name] = metrics
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def headline_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """reports/metrics.json: the headline result without the confusion matrices (for dvc metrics diff)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k != "confusion_matrix"}
        out[key] = value
    return out


Loader = Callable[[Path, torch.device], tuple[nn.Module, dict[str, Any]]]


def _default_loader(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    from wbc.models import load_checkpoint

    return load_checkpoint(path, device=device)


def evaluate_all(
    headline: str | Path,
    compare: Mapping[str, str | Path],
    *,
    packed_dir: str | Path,
    out_root: str | Path,
    metrics_path: str | Path,
    batch_size: int = 64,
    device: str = "auto",
    loader: Loader = _default_loader,
) -> dict[str, dict[str, Any]]:
    """The evaluate stage: the headline checkpoint (as `headline`) and every compare checkpoint.

    Writes `<out_root>/<name>/...` (the folder is emptied first: no stale models) and
    `metrics_path` (the headline model's metrics). Returns {name: metrics}.
    """
    out_root = Path(out_root)
    jobs = {"headline": Path(headline), **{name: Path(p) for name, p in compare.items()}}
    missing = [str(p) for p in jobs.values() if not p.is_file()]
    if missing:
        raise WbcError(f"checkpoint(s) not found: {', '.join(missing)} (run the compare/train stages)")
    if out_root.exists():
        shutil.rmtree(out_root)
    dev = select_device(device)
    results = {}
    for name, path in jobs.items():
        model, meta = loader(path, dev)
        results[name] = evaluate_model(model, meta, packed_dir, out_root / name, batch_size=batch_size,
                                       device=dev, title=name if name != "headline" else f"headline ({meta['model_name']})")
        print(f"{name}: " + ", ".join(f"{s} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']}"
                                      for s, m in results[name].items() if s != "model"), file=sys.stderr)
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(headline_metrics(results["headline"]), indent=2) + "\n", encoding="utf-8")
    return results
