"""The feature files of the pipeline's sets (the `features` stage, `wbc features`).

For every set of the split (train, val, test and each external set) the 51 features of
`wbc.cells.features` are computed for each image from its ORIGINAL-resolution bytes in the image store
(not the small packed tensors), in the packed order (`splits.csv` `index`), and cached as one
`<set>.npz` per set, so that refitting the feature-based classifier never recomputes them; beside it
`<set>.invariant.npz`, the stain-invariant, scale-free features of `wbc.cells.invariant` (the
`invariant_svm` model's), from the same segmentation of each image (one decode, one segmentation).
Also written: `summary.json` (per set: images and the count of each segmentation status, so
degenerate cells are counted, never silent; under "invariant" the rows whose invariant features are
all or partly undefined) and `segmentation.png` (a few cells per class of each
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
from wbc.cells import invariant
from wbc.cells.features import N_FEATURES, UNREADABLE, extract_rows, features_of, save_features, set_file
from wbc.data.ingest import read_manifest
from wbc.cells.segment import as_rgb, segment
from wbc.cells.segment_plot import segmentation_figure
from wbc.data.store import ImageStore, decode_image

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


def both_kinds(data: bytes) -> tuple[np.ndarray, str]:
    """The Tavakoli features then the invariant features of one encoded image (one segmentation):
    float64 (N_FEATURES + invariant.N_FEATURES,), and the status; NaN and "unreadable" when it does not
    decode. The first N_FEATURES values are exactly `wbc.cells.features.extract_bytes`'."""
    try:
        rgb = np.asarray(decode_image(data))
    except WbcError:
        return np.full(N_FEATURES + invariant.N_FEATURES, np.nan), UNREADABLE
    seg = segment(rgb)
    inv = invariant.features_of(seg, as_rgb(rgb)) if seg.found else np.full(invariant.N_FEATURES, np.nan)
    return np.concatenate([features_of(seg), inv]), seg.status


def featurize_sets(splits_csv: str | Path, kept_csv: str | Path, store_root: str | Path,
                   out_dir: str | Path, reports_dir: str | Path, workers: int = 0) -> dict[str, Any]:
    """Write `<out_dir>/<set>.npz` and `<out_dir>/<set>.invariant.npz` per set and
    `<reports_dir>/{summary.json,segmentation.png}`."""
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    sets = set_rows(splits_csv, kept_csv)
    for name, rows in sets.items():
        both, status = extract_rows(rows, store_root, workers=workers, extractor=both_kinds,
                                    n_features=N_FEATURES + invariant.N_FEATURES)
        X, X_inv = both[:, :N_FEATURES], both[:, N_FEATURES:]
        y = np.array([LABELS.index(lab) for lab in rows["label"]], dtype=np.int64)
        ids = rows["id"].to_numpy(dtype=str)
        save_features(set_file(out_dir, name), X, status, ids, y)
        invariant.save_invariant(set_file(out_dir, name, invariant.KIND), X_inv, status, ids, y)
        values, counts = np.unique(np.asarray(status, dtype=str), return_counts=True)
        undefined = np.isnan(X_inv)
        every, some = undefined.all(axis=1), undefined.any(axis=1)
        summary[name] = {"images": int(len(rows)), "status": {str(v): int(c) for v, c in zip(values, counts)},
                         "invariant": {"features": invariant.N_FEATURES, "rows_all_undefined": int(every.sum()),
                                       "rows_some_undefined": int((some & ~every).sum())}}
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
