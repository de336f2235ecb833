"""The feature files of the pipeline's sets (the `features` stage, `wbc features`).

For every set of the split (train, val, test and each external set) the 51 features of
`wbc.cells.features` are computed for each image from its ORIGINAL-resolution bytes in the image store
(not the small packed tensors), in the packed order (`splits.csv` `index`), and cached as one
`<set>.npz` per set, so that refitting the feature-based classifier never recomputes them.
Also written: `summary.json` (per set: images and the count of each segmentation status, so
degenerate cells are counted, never silent) and `segmentation.png` (a few cells per class of each
evaluation set with the nucleus outline and the convex hull drawn: a picture to check at a glance).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wbc import LABELS
from wbc.core.errors import WbcError
from wbc.cells.features import extract_rows, save_features
from wbc.data.ingest import read_manifest
from wbc.cells.segment import segment
from wbc.cells.segment_plot import segmentation_figure
from wbc.data.store import ImageStore

#: Cells per class and evaluation set in segmentation.png.
FIGURE_PER_CLASS = 3


def set_rows(splits_csv: str | Path, kept_csv: str | Path) -> dict[str, pd.DataFrame]:
    """{set name: kept-manifest rows of the set in packed order} (train, val, test, externals)."""
    splits = pd.read_csv(splits_csv, dtype={"id": str, "split": str, "label": str})
    kept = read_manifest(kept_csv).set_index("id")
    missing = sorted(set(splits["id"]) - set(kept.index))
    if missing:
        raise WbcError(f"{len(missing)} image(s) of {splits_csv} are not in {kept_csv} (e.g. {missing[0]}): "
                       "re-run the split stage")
    out = {}
    for name, group in splits.groupby("split", sort=False):
        group = group.sort_values("index", kind="stable")
        out[str(name)] = kept.loc[group["id"].tolist()].reset_index()
    order = ["train", "val", "test"]
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def featurize_sets(splits_csv: str | Path, kept_csv: str | Path, store_root: str | Path,
                   out_dir: str | Path, reports_dir: str | Path, workers: int = 0) -> dict[str, Any]:
    """Write `<out_dir>/<set>.npz` per set and `<reports_dir>/{summary.json,segmentation.png}`."""
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    sets = set_rows(splits_csv, kept_csv)
    for name, rows in sets.items():
        X, status = extract_rows(rows, store_root, workers=workers)
        y = np.array([LABELS.index(lab) for lab in rows["label"]], dtype=np.int64)
        save_features(out_dir / f"{name}.npz", X, status, rows["id"].to_numpy(dtype=str), y)
        values, counts = np.unique(np.asarray(status, dtype=str), return_counts=True)
        summary[name] = {"images": int(len(rows)), "status": {str(v): int(c) for v, c in zip(values, counts)}}
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    figure(sets, store_root, reports_dir / "segmentation.png")
    return summary


def figure(sets: dict[str, pd.DataFrame], store_root: str | Path, path: Path) -> Path:
    """segmentation.png: the first FIGURE_PER_CLASS cells of each class in each evaluation set."""
    store = ImageStore(store_root)
    images, titles = [], []
    for name, rows in sets.items():
        if name in ("train", "val"):
            continue
        for label in LABELS:
            for row in rows[rows["label"] == label].head(FIGURE_PER_CLASS).to_dict("records"):
                rgb = np.asarray(store.load_rgb(row))
                images.append((rgb, segment(rgb)))
                titles.append(f"{label}\n({name})")
    return segmentation_figure(images, titles, path, title="Nucleus (outline) and convex hull per class and test set")
