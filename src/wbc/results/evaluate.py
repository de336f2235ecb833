"""Evaluating one trained model (any kind, `wbc.results.predictors`) on the packed test and external sets.

For each evaluation set (`test`, then each external set of the packed data) the model predicts
every image, and `<out_dir>/` receives `metrics.json` (`wbc.results.metrics.classification_metrics` per
set, plus the model name, its file and, for the feature-based model, the count of degenerate
cells per set), `predictions_<set>.csv` and `confusion_<set>.png` (`wbc.results.report.write_set_outputs`).
This is the `evaluate` stage of one (model, seed) instance and `wbc evaluate`.

Generalization (issue 15): the sets declared in `evaluate.external` (`wbc.dataset.external`: any folder or
zip of class folders, prepared with the model's own crop) are evaluated after the packed ones; with
a predictor loaded with `adapt="adabn"` each set from another lab or camera (every set but the
in-domain `test` split: the packed external sets and the declared ones) gets its own BatchNorm
statistics, estimated on its own (unlabelled) inputs (`wbc.learn.adapt`). The in-domain test split is
predicted with the statistics the model was trained with: it comes from the training lab, whose
statistics the model already holds (AdaBN is a deployment step for a new lab, as in `wbc predict
--adapt` on that lab's folder). `metrics.json` records the model's `setting` (crop, norm, stain
augmentation, stain normalisation, adaptation) for the generalization report.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from wbc.core.errors import ConfigError
from wbc.cells.cellcrop import PATHS, fallback_rate
from wbc.dataset.external import ExternalSet, load_external
from wbc.cells.features import load_features
from wbc.results.metrics import classification_metrics
from wbc.results.predictors import Predictor
from wbc.results.report import write_set_outputs
from wbc.learn.packed import read_meta


def evaluation_sets(packed_meta: Mapping[str, Any]) -> list[str]:
    """`test`, then each external set, skipping empty ones."""
    sizes = packed_meta.get("sets", {})
    return [s for s in ["test", *packed_meta.get("external", [])] if sizes.get(s, 0) > 0]


#: The in-domain set: images of the training labs, predicted without test-time adaptation.
IN_DOMAIN = "test"


def _score(predictor: Predictor, x: np.ndarray, y: np.ndarray, classes: list[str], batch_size: int,
           desc: str, adapt: bool = True) -> dict[str, Any]:
    """Metrics of one set (the predictor adapted to the set's own inputs first when asked and
    `adapt`); the predictions ride along under `_pred`."""
    model = predictor.adapted(x, batch_size=batch_size) if adapt else predictor
    y_pred = model.predict(x, batch_size=batch_size, desc=desc).argmax(axis=1)
    return {**classification_metrics(y, y_pred, classes), "_pred": y_pred}


def degenerate_counts(features_dir: Path, set_name: str) -> dict[str, int]:
    """Per status (other than `ok`), how many cells of a set the feature extraction flagged."""
    status = load_features(features_dir / f"{set_name}.npz")["status"]
    values, counts = np.unique(np.asarray(status, dtype=str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts) if v != "ok"}


def crop_summary(paths: Mapping[str, int], mode: str) -> dict[str, Any]:
    """`{"paths": {path: count}, "fallback_rate": fraction}` of one set's crops (`wbc.cells.cellcrop`)."""
    counts = {p: int(paths.get(p, 0)) for p in PATHS}
    return {"paths": counts, "fallback_rate": round(fallback_rate(counts, mode), 4)}


def _packed_paths(packed_meta: Mapping[str, Any], set_name: str) -> dict[str, int]:
    """The crop path counts of a packed set (older packings: from the fallback count)."""
    if set_name in packed_meta.get("crop_paths", {}):
        return dict(packed_meta["crop_paths"][set_name])
    mode, n = packed_meta.get("crop", "centre"), int(packed_meta["sets"][set_name])
    missed = int(packed_meta.get("cell_fallback", {}).get(set_name, 0))
    return {mode: n - missed, **({"centre": missed} if missed else {})}


def evaluate_predictor(predictor: Predictor, packed_dir: str | Path, out_dir: str | Path, *,
                       features_dir: str | Path | None = None, batch_size: int = 64,
                       title: str = "", external: Mapping[str, Any] | None = None,
                       prepared: dict[Any, ExternalSet] | None = None) -> dict[str, Any]:
    """Evaluate one model on every evaluation set and every `external` folder set (`wbc.dataset.external.
    parse_specs` output); write `out_dir` (emptied first). Returns the metrics dict
    ``{"model": name, "setting": {...}, "<set>": classification_metrics(...), ...}``; a CNN's sets
    also get `crop` (`crop_summary`: the crop paths taken and the fallback rate).

    `prepared`: a cache of prepared external sets shared by evaluations of models that prepare
    inputs alike (the same `input_key`), e.g. one benchmark process evaluating many checkpoints."""
    packed_dir, out_dir = Path(packed_dir), Path(out_dir)
    features_dir = Path(features_dir) if features_dir is not None else None
    packed_meta = read_meta(packed_dir)
    if list(predictor.classes) != list(packed_meta["classes"]):
        raise ConfigError(f"{title or predictor.model_name}: model classes {predictor.classes} differ from "
                          f"the packed data's {packed_meta['classes']}")
    if out_dir.exists():  # the stage owns this folder: no stale files of another model
        shutil.rmtree(out_dir)
    classes = list(packed_meta["classes"])
    title = title or predictor.model_name
    result: dict[str, Any] = {"model": predictor.model_name, "setting": predictor.setting()}
    for set_name in evaluation_sets(packed_meta):
        x = predictor.set_inputs(set_name, packed_dir, features_dir)
        y = np.load(packed_dir / f"{set_name}_y.npy")
        metrics = _score(predictor, x, y, classes, batch_size, f"{title} {set_name}", adapt=set_name != IN_DOMAIN)
        if predictor.kind == "features":
            metrics["degenerate_cells"] = degenerate_counts(features_dir, set_name)
        else:
            metrics["crop"] = crop_summary(_packed_paths(packed_meta, set_name), predictor.crop.mode)
        write_set_outputs(out_dir, set_name, y, metrics.pop("_pred"), classes, metrics,
                          title=f"{title}: {set_name} (n = {len(y)})")
        result[set_name] = metrics
    for set_name, spec in (external or {}).items():
        ext = _external(set_name, spec, predictor, classes, prepared)
        metrics = _score(predictor, ext.x, ext.y, classes, batch_size, f"{title} {set_name}")
        crop = None if predictor.kind == "features" else crop_summary(ext.paths, predictor.crop.mode)
        metrics["external_folder"] = {"path": str(spec["path"]), "skipped": ext.skipped,
                                      "cell_crop_fallback": 0 if crop is None else
                                      sum(n for p, n in crop["paths"].items() if p != predictor.crop.mode)}
        if crop is not None:
            metrics["crop"] = crop
        write_set_outputs(out_dir, set_name, ext.y, metrics.pop("_pred"), classes, metrics,
                          title=f"{title}: {set_name} (n = {len(ext.y)})")
        result[set_name] = metrics
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def input_key(predictor: Predictor) -> tuple:
    """What determines a predictor's prepared inputs: its kind, crop and image size (CNNs), or its
    feature kind."""
    if predictor.kind == "features":
        return ("features", predictor.model_name)
    return ("cnn", tuple(sorted(predictor.crop.to_dict().items())), int(predictor.meta["image_size"]))


def _external(name: str, spec: Mapping[str, Any], predictor: Predictor, classes: list[str],
              prepared: dict[Any, ExternalSet] | None) -> ExternalSet:
    """One external set prepared by `predictor` (from the `prepared` cache when it holds it), with
    `paths` = the crop paths its images took."""
    key = (name, str(spec["path"]), input_key(predictor))
    if prepared is not None and key in prepared:
        return prepared[key]
    before = dict(getattr(predictor, "paths", {}))
    ext = load_external(name, spec, predictor, classes)
    ext.paths = {p: n - before.get(p, 0) for p, n in getattr(predictor, "paths", {}).items()}
    if prepared is not None:
        prepared[key] = ext
    return ext
