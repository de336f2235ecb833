"""The 51 features of Tavakoli et al. (Sci Rep 11:19428, 2021) from a `wbc.cells.segment` segmentation.

- 3 shape features of the nucleus (`shape_features`): circularity P^2 / (4 pi A), convexity = hull
  perimeter / P, solidity = A / hull area. P and A are the perimeter and area of the nucleus boundary
  polygons (every component, holes subtracted from A and added to P), simplified by Douglas-Peucker
  at `APPROX_EPS` px so the pixel staircase does not inflate P (a digital disc gets ~1.0, 1.0, 1.0);
  the hull is that of the polygons' vertices. A nucleus in separate pieces (lobes) can have a
  convexity above 1 (the hull spans the gaps).
- 48 colour features (`colour_features`): 12 channels x (mean, std) x two ratios, stat(nucleus) /
  stat(hull) and stat(ROC) / stat(hull), on the colour-balanced image. Channels are OpenCV's 8-bit
  encodings: R, G, B; H (0..179), S, V; L, a, b (a, b offset by 128); Y, Cr, Cb (Cr, Cb offset by 128).
  Hue is averaged linearly (as in the paper), not circularly. std is the population std.

Undefined features are NaN: all 51 when there is no nucleus (`no_nucleus`, `bad_input`,
`unreadable`), the 24 ROC ratios when the ROC is empty (`empty_roc`), a ratio whose hull statistic
is 0, and a shape feature with a zero area or perimeter.

Status of a feature vector: the segmentation status (see `wbc.cells.segment`: "ok", "bad_input",
"no_nucleus", or flags joined by "+" such as "touches_border+empty_roc"), or "unreadable" when the
image could not be read or decoded (`extract_rows`).

`extract_rows` runs over manifest rows of an image store in forked worker processes (chunks of rows;
each worker reads the store itself), in row order. `save_features` / `load_features` keep one set
in one .npz file (arrays only, loaded with allow_pickle=False), named by `set_file`. The batch and
file code also serve another kind of features (`extractor`, `names`: `wbc.cells.invariant`).
"""
from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from wbc.core.parallel import n_workers
from wbc.core.errors import WbcError
from wbc.cells.segment import Segmentation, segment
from wbc.data.store import ImageStore, decode_image

#: Douglas-Peucker tolerance (pixels) of the nucleus boundary polygons.
APPROX_EPS = 1.0
SHAPE_NAMES = ("circularity", "convexity", "solidity")
#: (colour space, channel) in the order of the paper's list R, G, B, H, S, V, L, a, b, Y, Cr, Cb.
CHANNELS = (("rgb", "R"), ("rgb", "G"), ("rgb", "B"), ("hsv", "H"), ("hsv", "S"), ("hsv", "V"),
            ("lab", "L"), ("lab", "a"), ("lab", "b"), ("ycrcb", "Y"), ("ycrcb", "Cr"), ("ycrcb", "Cb"))
STATS = ("mean", "std")
REGIONS = ("nucleus", "roc")
#: `<region>_<stat>_<space>_<channel>` = stat over the region / the same stat over the hull.
COLOUR_NAMES = tuple(f"{region}_{stat}_{space}_{ch}" for space, ch in CHANNELS for stat in STATS for region in REGIONS)
FEATURE_NAMES = SHAPE_NAMES + COLOUR_NAMES
N_FEATURES = len(FEATURE_NAMES)  # 51
#: Status of an image that could not be read or decoded.
UNREADABLE = "unreadable"
#: Rows per task of the worker processes (at most; small inputs are cut finer to use every worker).
CHUNK = 64
_ROC_COLUMNS = np.array([name.startswith("roc_") for name in FEATURE_NAMES])


# ----------------------------------------------------------------------------- one image


def _polygons(mask: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Simplified boundary polygons of every component and hole, and +1 (outer) / -1 (hole) signs."""
    contours, hierarchy = cv2.findContours(mask.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return [], np.zeros(0)
    polys = [cv2.approxPolyDP(c, APPROX_EPS, True) for c in contours]
    signs = np.where(hierarchy[0][:, 3] < 0, 1.0, -1.0)
    return polys, signs


def shape_features(nucleus: np.ndarray) -> np.ndarray:
    """(circularity, convexity, solidity) of a boolean nucleus mask; NaN where undefined."""
    polys, signs = _polygons(nucleus)
    out = np.full(3, np.nan)
    if not polys:
        return out
    perimeter = sum(cv2.arcLength(p, True) for p in polys)
    area = float(sum(s * cv2.contourArea(p) for p, s in zip(polys, signs)))
    hull = cv2.convexHull(np.concatenate([p for p, s in zip(polys, signs) if s > 0]))
    hull_perimeter, hull_area = cv2.arcLength(hull, True), cv2.contourArea(hull)
    if area > 0:
        out[0] = perimeter ** 2 / (4.0 * np.pi * area)
    if perimeter > 0:
        out[1] = hull_perimeter / perimeter
    if hull_area > 0 and area > 0:
        out[2] = area / hull_area
    return out


def colour_spaces(rgb: np.ndarray) -> list[np.ndarray]:
    """The image in the four colour spaces of CHANNELS (uint8 RGB, HSV, Lab, YCrCb), 3 channels each."""
    return [rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB),
            cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)]


def region_stats(balanced: np.ndarray, nucleus: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """Mean and population std of the 12 channels over nucleus, ROC and hull: array (stat, region, channel);
    NaN for an empty region. OpenCV's masked meanStdDev over the hull's bounding box gives the nucleus
    and hull statistics; the ROC's (hull minus nucleus) follow from their sums and sums of squares."""
    x, y, w, h = cv2.boundingRect(hull.view(np.uint8))
    box = (slice(y, y + h), slice(x, x + w))
    nuc, hul = np.ascontiguousarray(nucleus[box]).view(np.uint8), np.ascontiguousarray(hull[box]).view(np.uint8)
    n = np.array([cv2.countNonZero(nuc), cv2.countNonZero(hul)], np.float64)[:, None]  # (nucleus, hull)
    mean, std = np.full((2, 12), np.nan), np.full((2, 12), np.nan)
    for s, image in enumerate(colour_spaces(np.ascontiguousarray(balanced[box]))):
        for r, mask in enumerate((nuc, hul)):
            if n[r, 0] > 0:
                m, d = cv2.meanStdDev(image, mask=mask)
                mean[r, 3 * s:3 * s + 3], std[r, 3 * s:3 * s + 3] = m.ravel(), d.ravel()
    n_roc = n[1] - n[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        roc_mean = (n[1] * mean[1] - n[0] * mean[0]) / n_roc
        roc_sq = (n[1] * (std[1] ** 2 + mean[1] ** 2) - n[0] * (std[0] ** 2 + mean[0] ** 2)) / n_roc
    roc_std = np.sqrt(np.maximum(roc_sq - roc_mean ** 2, 0.0))
    if n_roc[0] <= 0:
        roc_mean[:], roc_std[:] = np.nan, np.nan
    return np.stack([np.stack([mean[0], roc_mean, mean[1]]), np.stack([std[0], roc_std, std[1]])])


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, NaN where b is 0 or NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def colour_features(balanced: np.ndarray, nucleus: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """The 48 colour ratios (COLOUR_NAMES order): stat(nucleus) / stat(hull) and stat(ROC) / stat(hull)."""
    stats = region_stats(balanced, nucleus, hull)
    ratios = np.stack([_ratio(stats[:, 0], stats[:, 2]), _ratio(stats[:, 1], stats[:, 2])])  # (region, stat, channel)
    return ratios.transpose(2, 1, 0).reshape(-1)                    # channel, stat, region


def features_of(seg: Segmentation) -> np.ndarray:
    """The 51 features (float64) of a segmentation; all NaN when no nucleus was found."""
    out = np.full(N_FEATURES, np.nan)
    if not seg.found:
        return out
    out[:3] = shape_features(seg.nucleus)
    out[3:] = colour_features(seg.balanced, seg.nucleus, seg.hull)
    if not seg.roc.any():
        out[_ROC_COLUMNS] = np.nan
    return out


def extract(rgb: np.ndarray) -> tuple[np.ndarray, str]:
    """(51 features float64 with NaN where undefined, status) of one HxWx3 uint8 RGB image."""
    seg = segment(rgb)
    return features_of(seg), seg.status


def extract_encoded(data: bytes, extract_rgb: Callable[[np.ndarray], tuple[np.ndarray, str]], n_features: int
                    ) -> tuple[np.ndarray, str]:
    """`extract_rgb` of an encoded image; (all NaN, "unreadable") when it does not decode."""
    try:
        rgb = np.asarray(decode_image(data))
    except WbcError:
        return np.full(n_features, np.nan), UNREADABLE
    return extract_rgb(rgb)


def extract_bytes(data: bytes) -> tuple[np.ndarray, str]:
    """`extract` of an encoded image; ("all NaN", "unreadable") when it does not decode."""
    return extract_encoded(data, extract, N_FEATURES)


# ----------------------------------------------------------------------------- many images

#: Bytes of one encoded image -> (feature vector, status): `extract_bytes`, or another feature kind's.
Extractor = Callable[[bytes], tuple[np.ndarray, str]]
#: The current job: (the store, int64 (n, 3) shard/offset/length, the extractor, features per row). Set
#: before forking, so the workers inherit it (each maps the shards it reads on first use; the extractor
#: need not pickle); cleared after the call.
_JOB: tuple[ImageStore, np.ndarray, Extractor, int] | None = None


def _chunk(bounds: tuple[int, int]) -> tuple[int, np.ndarray, list[str]]:
    """Features of rows [start, stop) of the current job (runs in a worker, or in this process)."""
    store, index, extractor, n_features = _JOB
    start, stop = bounds
    x = np.empty((stop - start, n_features), np.float32)
    status = []
    for i, (shard, offset, length) in enumerate(index[start:stop]):
        try:
            data = store.read(shard, offset, length)
        except WbcError:
            x[i], s = np.nan, UNREADABLE
        else:
            feats, s = extractor(data)
            x[i] = feats
        status.append(s)
    return start, x, status


def _chunks(n: int, nw: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges: CHUNK rows, or fewer so that each of `nw` workers gets about 4 tasks."""
    size = max(1, min(CHUNK, -(-n // (4 * nw))))
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _run(tasks: list[tuple[int, int]], nw: int) -> Iterator[tuple[int, np.ndarray, list[str]]]:
    """Results of `_chunk` over the tasks, in task order: a fork pool of `nw` processes, or in process."""
    if nw <= 1 or "fork" not in mp.get_all_start_methods():
        yield from map(_chunk, tasks)
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # set before forking: a forked child must not reconfigure OpenCV's threads
    try:
        with mp.get_context("fork").Pool(nw) as pool:
            yield from pool.imap(_chunk, tasks)
    finally:
        cv2.setNumThreads(threads)


def extract_rows(rows: pd.DataFrame, store_root: str | Path, workers: int = 0, progress: bool = True, *,
                 extractor: Extractor = extract_bytes, n_features: int = N_FEATURES, desc: str = "features",
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Features of manifest rows (columns shard, offset, length) read from the image store at `store_root`.

    Returns (X float32 (n, 51), status str array (n,)) in row order. `workers`: processes (0 = all
    cores); chunks of CHUNK rows go to forked workers that read and decode the images themselves.
    Unreadable images get NaN features and status "unreadable". `extractor` (with `n_features`
    features per image) computes another kind of features over the same machinery.
    """
    global _JOB
    missing = {"shard", "offset", "length"} - set(rows.columns)
    if missing:
        raise WbcError(f"extract_rows: manifest rows lack the column(s) {sorted(missing)}")
    index = rows[["shard", "offset", "length"]].to_numpy(dtype=np.int64)
    n = len(index)
    x = np.full((n, n_features), np.nan, np.float32)
    status = np.full(n, UNREADABLE, dtype=object)
    nw = max(1, min(n_workers(workers), n))
    tasks = _chunks(n, nw)
    # a missing store is an error here, not n unreadable rows
    _JOB = (ImageStore(store_root), index, extractor, n_features)
    try:
        with tqdm(total=n, desc=desc, unit="img", disable=None if progress else True) as bar:
            for start, part, stat in _run(tasks, nw):
                x[start:start + len(part)] = part
                status[start:start + len(part)] = stat
                bar.update(len(part))
    finally:
        _JOB = None
    return x, status.astype(str)


# ----------------------------------------------------------------------------- cache file


@dataclass(frozen=True)
class FeatureSet:
    """One set's features as saved by `save_features`; fields also readable as `fs["X"]` (and
    `fs["y"]` for `labels`)."""

    X: np.ndarray            # float32 (n, features): 51 here, another kind's count (`names`)
    status: np.ndarray       # str (n,)
    ids: np.ndarray          # str (n,)
    labels: np.ndarray       # (n,) class names (str) or label indices (int), as saved
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in ("X", "status", "ids", "labels", "y", "feature_names"):
            raise KeyError(key)
        return getattr(self, "labels" if key == "y" else key)


def _labels_array(labels) -> np.ndarray:
    """Labels as a str or integer array (object arrays would need pickle)."""
    a = np.asarray(labels)
    return a if a.dtype.kind in "iuU" else a.astype(str)


def set_file(features_dir: str | Path, set_name: str, kind: str = "") -> Path:
    """The cache file of one set: `<set>.npz` (these features) or `<set>.<kind>.npz` (another kind)."""
    return Path(features_dir) / (f"{set_name}.{kind}.npz" if kind else f"{set_name}.npz")


def save_features(path: str | Path, X: np.ndarray, status, ids, labels,
                  names: tuple[str, ...] = FEATURE_NAMES) -> Path:
    """Write one set to a single .npz: X float32 (n, 51), status and ids (str), labels (str class names
    or int indices, kept as given), feature_names. Arrays only: read back without pickle.
    `names`: the columns of another feature kind."""
    X = np.asarray(X, np.float32)
    arrays = {"status": np.asarray(status, str), "ids": np.asarray(ids, str), "labels": _labels_array(labels)}
    if X.ndim != 2 or X.shape[1] != len(names) or any(a.shape != (len(X),) for a in arrays.values()):
        raise ValueError(f"save_features: X must be (n, {len(names)}) and status/ids/labels (n,); got {X.shape}, "
                         + ", ".join(f"{k} {a.shape}" for k, a in arrays.items()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # a file object: numpy would otherwise append .npz to the name
        np.savez_compressed(fh, X=X, feature_names=np.array(names), **arrays)
    return path


def load_features(path: str | Path, names: tuple[str, ...] = FEATURE_NAMES) -> FeatureSet:
    """Read a file written by `save_features` (no pickle); raises WbcError when it is not one or is stale
    (its feature names are not `names`)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("X", "status", "ids", "labels", "feature_names")}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise WbcError(f"{path}: not a feature file ({exc})") from exc
    saved = tuple(str(n) for n in data["feature_names"])
    if saved != tuple(names):
        raise WbcError(f"{path}: feature names differ from this version's ({len(saved)} vs {len(names)}); re-extract")
    X = data["X"]
    if X.dtype != np.float32 or X.ndim != 2 or any(data[k].shape != (len(X),) for k in ("status", "ids", "labels")):
        raise WbcError(f"{path}: inconsistent feature arrays")
    return FeatureSet(X, data["status"], data["ids"], data["labels"], tuple(names))
