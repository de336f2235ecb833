"""Packing the sets into arrays: `<set>_x.npy` (uint8 NCHW), `<set>_y.npy` and `meta.json`.

Each image goes through `wbc.cells.cellcrop.crop_with_path` (the centre square or a square centred
on the white cell, `split.crop` / `split.cell_fraction` / `split.rbc_span`; bicubic resize), streamed
into memory-mapped files. With `views` the train set also gets `train_view_x.npy`: each train image
as another lab might hand it over (`wbc.cells.labshift.lab_view`: tight crop, low resolution,
JPEG, drawn per image from a generator seeded by (view seed, CRC-32 of the id)) and then through
the same crop, so the fallback paths (`cell`, `centre`) occur in training as they would in
`wbc predict` (`wbc.learn.packed` mixes them in, `train.lab_view_prob`).

`meta.json` records the crop, per set the count of each crop path (`crop_paths`) and of fallbacks
(`cell_fallback`), the views' crop paths (`view_crop_paths`) and the training set's Lab statistics
`lab_target` for `wbc.cells.stainnorm`.
"""
from __future__ import annotations

import json
import os
import zlib
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from wbc import LABELS
from wbc.cells.cellcrop import CropSpec, crop_square, crop_with_path, path_counts
from wbc.cells.labshift import lab_view
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


#: Default seed of the training views' draws (params `split.seed` is added to it).
VIEW_SEED = 20211119


def _init_worker(store_root: str, size: int, crop: CropSpec = CropSpec(), view_seed: int | None = None) -> None:
    _WORKER["store"] = ImageStore(store_root)
    _WORKER["size"] = size
    _WORKER["crop"] = crop
    _WORKER["view_seed"] = view_seed


def view_rng(seed: int, image_id: str) -> np.random.Generator:
    """The generator of one image's training-view draws."""
    return np.random.default_rng([int(seed), zlib.crc32(image_id.encode("utf-8"))])


def _prepare(item: tuple[str, tuple[int, int, int]]) -> tuple[np.ndarray, str]:
    """(uint8 (3, S, S) input, crop path) of one stored image (`wbc.cells.cellcrop.crop_with_path`);
    with a view seed set, of its training view (`wbc.cells.labshift.lab_view`) instead."""
    image_id, loc = item
    try:
        img = decode_image(_WORKER["store"].read(*loc))
        if _WORKER.get("view_seed") is not None:
            rgb = np.asarray(img.convert("RGB"))
            img = Image.fromarray(lab_view(rgb, view_rng(_WORKER["view_seed"], image_id)))
        return crop_with_path(img, _WORKER["size"], _WORKER["crop"])
    except WbcError as exc:
        raise WbcError(f"{image_id}: {exc}") from None


def _prepared(items: list[tuple[str, tuple[int, int, int]]], store_root: str, size: int,
              workers: int, crop: CropSpec = CropSpec(), view_seed: int | None = None,
              ) -> Iterator[tuple[np.ndarray, str]]:
    """(input, crop path) of (id, location) items, in order (parallel when workers > 1); with
    `view_seed`, of their training views."""
    if workers <= 1 or len(items) < 64:
        _init_worker(store_root, size, crop, view_seed)
        yield from map(_prepare, items)
        return
    with get_context("fork" if os.name == "posix" else "spawn").Pool(
        workers, initializer=_init_worker, initargs=(store_root, size, crop, view_seed)
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
    view_seed: int | None = None,
) -> dict[str, Any]:
    """Write `<set>_x.npy` (uint8, N x 3 x S x S), `<set>_y.npy` (int64) and `meta.json`.

    Images are streamed into a memory-mapped `.npy` (never the whole set in RAM). Stale
    `*_x.npy`/`*_y.npy` files of an earlier run are removed first. Returns the meta dict, which
    records the crop (`crop`, `cell_fraction`), per set the crop paths taken (`crop_paths`) and the
    images whose crop fell back (`cell_fallback`), and the train set's Lab statistics (`lab_target`).
    `view_seed` (None: none): also write the train set's views, `train_view_x.npy` (their crop paths:
    `view_crop_paths`).
    """
    if int(image_size) < 8:
        raise ConfigError(f"split.image_size must be >= 8, got {image_size!r}")
    size, workers = int(image_size), n_workers(int(workers or 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*_x.npy"), *out.glob("*_y.npy"), out / "meta.json"]:  # incl. train_view_x.npy
        stale.unlink(missing_ok=True)
    locs = kept_locations(kept)
    frame = assignment.frame
    counts: dict[str, int] = {}
    paths: dict[str, dict[str, int]] = {}
    for name in assignment.sets:
        rows = frame[frame["split"] == name].sort_values("index")
        counts[name], paths[name] = _pack_set(rows, locs, str(store_root), out, name, size, workers, crop)
    external = [s for s in assignment.sets if s not in POOL_SETS]
    fallback = {name: sum(n for p, n in c.items() if p != crop.mode) for name, c in paths.items()}
    meta = {
        "classes": list(LABELS), "image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "sets": counts, "external": external, **crop.to_dict(), "cell_fallback": fallback,
        "lab_target": lab_target(np.load(out / "train_x.npy", mmap_mode="r")),
    }
    if crop.mode != "centre":
        meta["crop_paths"] = paths
    if view_seed is not None:
        rows = frame[frame["split"] == "train"].sort_values("index")
        _, meta["view_crop_paths"] = _pack_set(rows, locs, str(store_root), out, "train", size, workers, crop,
                                               view_seed=int(view_seed))
        meta["view_seed"] = int(view_seed)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _pack_set(rows: pd.DataFrame, locs: Mapping[str, tuple[int, int, int]], store_root: str, out: Path, name: str, size: int,
              workers: int, crop: CropSpec = CropSpec(), view_seed: int | None = None) -> tuple[int, dict[str, int]]:
    """Pack one set (with `view_seed`: its views, `<name>_view_x.npy`); returns its image count and
    the count of each crop path."""
    n, taken = len(rows), []
    where = [(i, locs[i]) for i in rows["id"]]
    stem = f"{name}_view" if view_seed is not None else name
    x = np.lib.format.open_memmap(out / f"{stem}_x.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    it = _prepared(where, store_root, size, workers, crop, view_seed)
    for i, (arr, path) in enumerate(tqdm(it, total=n, desc=f"pack {stem}", unit="img", disable=None)):
        x[i] = arr
        taken.append(path)
    x.flush()
    del x
    if view_seed is None:
        y = np.array([LABELS.index(lab) for lab in rows["label"]], dtype=np.int64)
        np.save(out / f"{name}_y.npy", y)
    return n, path_counts(taken)
