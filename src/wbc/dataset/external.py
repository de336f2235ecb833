"""External test sets declared in the params: any lab's folder (or zip) of class folders.

A lab evaluates a trained model on its own images through the pipeline by declaring them in
`params.yaml` (`evaluate.external`), one entry per set:

    evaluate:
      external:
        mylab:
          path: mylab.zip        # under data/external/ (path.external): <anything>/<class folder>/<image>
          classes: {baso: basophil, eos: eosinophil}   # optional: folder name -> label

In the pipeline the paths are relative to `data/external/` (dvc.yaml `path.external`), a dependency
of every evaluate stage: adding, changing or removing images there re-runs the evaluations. A path
outside it is refused (DVC would not track it); `wbc evaluate --external NAME=PATH` takes any path.

Without `classes`, class folders named like the labels (basophil, ...) are used as they are.
`load_external(spec, predictor)` reads the images (`wbc.dataset.inputs`: archive limits, decompression-bomb
guard), prepares each with the model's own `prepare` (the CNN's crop as it was trained,
`wbc.cells.cellcrop`; the feature model's features) and returns the inputs and labels; images in other
folders, and unreadable ones, are counted, not fatal.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from wbc.core.errors import ConfigError
from wbc.dataset.inputs import InputLimits, collect_inputs, iter_images


@dataclass
class ExternalSet:
    """A prepared external set: model inputs `x`, label indices `y`, and what was left out."""

    name: str
    x: np.ndarray
    y: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    paths: dict[str, int] = field(default_factory=dict)    # crop path -> count (CNN inputs, wbc.cells.cellcrop)


def parse_specs(section: Mapping[str, Any] | None, root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Validate the params `evaluate.external` mapping -> {name: {"path": Path, "classes": {...}}}.

    With `root` (the pipeline's `path.external` folder, a dependency of the evaluate stages) relative
    paths are relative to it, and a path outside it (absolute, or leaving it by `..`) is refused: DVC
    would not see its images change. A file, folder or symbolic link placed under `root` (or a
    `dvc import`) is tracked."""
    specs = {}
    for name, spec in (section or {}).items():
        if not isinstance(spec, Mapping) or not spec.get("path"):
            raise ConfigError(f"evaluate.external.{name}: needs a `path` (folder or zip of class folders)")
        if name in ("train", "val", "test"):
            raise ConfigError(f"evaluate.external.{name}: the name clashes with a packed set")
        if str(name).startswith("stress_"):
            raise ConfigError(f"evaluate.external.{name}: names starting with stress_ are the stress sets' (stage stress)")
        path = Path(spec["path"])
        if root is not None:
            path = Path(root) / path
            inside = os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) == os.path.abspath(root)
            if not inside:
                raise ConfigError(f"evaluate.external.{name}: {spec['path']} is outside {root}, which the evaluate "
                                  f"stages depend on: DVC would not re-run them when its images change. Put the "
                                  f"folder or zip (or a symbolic link to it, or a `dvc import`) under {root} and "
                                  f"give its path relative to {root}")
        specs[str(name)] = {"path": path, "classes": dict(spec.get("classes") or {})}
    return specs


def class_folder(item_name: str) -> str:
    """The class folder of an input (the image's parent folder name, inside a zip or on disk)."""
    parts = item_name.replace("\\", "/").rsplit(":", 1)[-1].split("/")
    return parts[-2] if len(parts) >= 2 else ""


def load_external(name: str, spec: Mapping[str, Any], predictor: Any, classes: list[str],
                  limits: InputLimits | None = None) -> ExternalSet:
    """Read and prepare one declared external set with `predictor.prepare`."""
    path = Path(spec["path"])
    if not path.exists():
        raise ConfigError(f"evaluate.external.{name}: {path} not found")
    mapping = dict(spec.get("classes") or {}) or {c: c for c in classes}
    bad = sorted(set(mapping.values()) - set(classes))
    if bad:
        raise ConfigError(f"evaluate.external.{name}: unknown label(s) {bad}; valid: {classes}")
    items = [it for it in collect_inputs([path], limits)]
    xs, ys, skipped = [], [], {}
    for item, image, error in tqdm(iter_images(items, limits), total=len(items), desc=f"read {name}",
                                   unit="img", disable=None):
        folder = class_folder(item.name)
        reason = error and "unreadable" or ("" if folder in mapping else "other folder")
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        xs.append(predictor.prepare(image))
        ys.append(classes.index(mapping[folder]))
    if not xs:
        raise ConfigError(f"evaluate.external.{name}: no image in class folders {sorted(mapping)} under {path}")
    return ExternalSet(name, np.stack(xs), np.asarray(ys, dtype=np.int64), skipped)
