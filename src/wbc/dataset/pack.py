"""Packing the sets into arrays: `<set>_x.npy` (uint8 NCHW), `<set>_y.npy` and `meta.json`.

Each image goes through `wbc.cells.cellcrop.crop_square` (the centre square or a square centred on
the white cell, `split.crop` / `split.cell_fraction`; bicubic resize), streamed into memory-mapped
files. `meta.json` records the crop, the count of cell-crop fallbacks per set and the training
set's Lab statistics `lab_target` for `wbc.cells.stainnorm`.
"""
from __future__ import annotations

import json
import os
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from wbc import LABELS
from wbc.cells.cellcrop import CropSpec, crop_square
from wbc.cells.stainnorm import lab_target
from wbc.core.errors import ConfigError, WbcError
from wbc.core.parallel import n_workers
from wbc.data.store import ImageStore, decode_image
from wbc.dataset.assign import POOL_SETS, Assignment, kept_locations

#: ImageNet normalisation, recorded in meta.json for train/evaluate.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------

def square_resize(img: Image.Image, size: int) -> np.ndarray:
    """Centre square crop, bicubic (antialiased) resize to size x size -> uint8 (3, S, S)
    (`wbc.cells.cellcrop.crop_square` with the centre crop)."""
    return crop_square(img, size)[0]


_WORKER: dict[str, Any] = {}


def _init_worker(store_root: str, size: int, crop: CropSpec = CropSpec()) -> None:
    _WORKER["store"] = ImageStore(store_root)
    _WORKER["size"] = size
    _WORKER["crop"] = crop


def _prepare(item: tuple[str, tuple[int, int, int]]) -> tuple[np.ndarray, bool]:
    """(uint8 (3, S, S) input, cell found) of one stored image (`wbc.cells.cellcrop.crop_square`)."""
    image_id, loc = item
    try:
        return crop_square(decode_image(_WORKER["store"].read(*loc)), _WORKER["size"], _WORKER["crop"])
    except WbcError as exc:
        raise WbcError(f"{image_id}: {exc}") from None


def _prepared(items: list[tuple[str, tuple[int, int, int]]], store_root: str, size: int,
              workers: int, crop: CropSpec = CropSpec()) -> Iterator[tuple[np.ndarray, bool]]:
    """(input, cell found) of (id, location) items, in order (parallel when workers > 1)."""
    if workers <= 1 or len(items) < 64:
        _init_worker(store_root, size, crop)
        yield from map(_prepare, items)
        return
    with get_context("fork" if os.name == "posix" else "spawn").Pool(
        workers, initializer=_init_worker, initargs=(store_root, size, crop)
    ) as pool:
        yield from pool.imap(_prepare, items, chunksize=16)


def pack(
    assignment: Assignment,
    kept: pd.DataFrame,
    store_root: str | Path,
    out_dir: str | Path,
    image_size: int,
    *,
    workers: int | None = 0,
    crop: CropSpec = CropSpec(),
) -> dict[str, Any]:
    """Write `<set>_x.npy` (uint8, N x 3 x S x S), `<set>_y.npy` (int64) and `meta.json`.

    Images are streamed into a memory-mapped `.npy` (never the whole set in RAM). Stale
    `*_x.npy`/`*_y.npy` files of an earlier run are removed first. Returns the meta dict, which
    records the crop (`crop`, `cell_fraction`), per set the images whose cell was not found (centre
    crop instead, `cell_fallback`) and the train set's Lab statistics (`lab_target`).
    """
    if int(image_size) < 8:
        raise ConfigError(f"split.image_size must be >= 8, got {image_size!r}")
    size, workers = int(image_size), n_workers(int(workers or 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*_x.npy"), *out.glob("*_y.npy"), out / "meta.json"]:
        stale.unlink(missing_ok=True)
    locs = kept_locations(kept)
    frame = assignment.frame
    counts: dict[str, int] = {}
    fallback: dict[str, int] = {}
    for name in assignment.sets:
        rows = frame[frame["split"] == name].sort_values("index")
        counts[name], fallback[name] = _pack_set(rows, locs, str(store_root), out, name, size, workers, crop)
    external = [s for s in assignment.sets if s not in POOL_SETS]
    meta = {
        "classes": list(LABELS), "image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "sets": counts, "external": external, **crop.to_dict(), "cell_fallback": fallback,
        "lab_target": lab_target(np.load(out / "train_x.npy", mmap_mode="r")),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _pack_set(rows: pd.DataFrame, locs: Mapping[str, tuple[int, int, int]], store_root: str, out: Path, name: str, size: int,
              workers: int, crop: CropSpec = CropSpec()) -> tuple[int, int]:
    """Pack one set; returns its image count and how many fell back to the centre crop."""
    n, missed = len(rows), 0
    where = [(i, locs[i]) for i in rows["id"]]
    x = np.lib.format.open_memmap(out / f"{name}_x.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    it = _prepared(where, store_root, size, workers, crop)
    for i, (arr, found) in enumerate(tqdm(it, total=n, desc=f"pack {name}", unit="img", disable=None)):
        x[i] = arr
        missed += not found
    x.flush()
    del x
    y = np.array([LABELS.index(lab) for lab in rows["label"]], dtype=np.int64)
    np.save(out / f"{name}_y.npy", y)
    return n, missed
