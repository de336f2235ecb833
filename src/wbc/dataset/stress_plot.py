"""The stress stage's picture: one test image per class, as stored and as each stress set holds it."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from wbc import LABELS
from wbc.cells.labshift import degrade_encoded
from wbc.data.plots import image_grid
from wbc.data.store import ImageStore, decode_image
from wbc.dataset.stress import image_rng


def stress_figure(rows: pd.DataFrame, store_root: str | Path, path: str | Path, kinds: Sequence[str],
                  seed: int) -> Path:
    """`path` (PNG): per class its first test image, then its version in every stress set (the same
    draws as the stress zips; shown at their own size, so the low-resolution ones look small)."""
    store = ImageStore(store_root)
    grid, captions = [], []
    for label in LABELS:
        hit = rows[rows["label"] == label]
        if hit.empty:
            continue
        image_id, loc = str(hit["id"].iloc[0]), hit["loc"].iloc[0]
        original = decode_image(store.read(*loc)).convert("RGB")
        rgb = np.asarray(original)
        images = [original]
        for kind in kinds:
            data, _suffix = degrade_encoded(rgb, kind, image_rng(seed, kind, image_id))
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        grid.append((label, images))
        captions.append(["as stored", *kinds])
    return image_grid(grid, path, cell=120, title="Stress sets: the test split as other labs might hand it over",
                      captions=captions)
