"""Stain-invariant, scale-free features of a segmented white cell (the `invariant_svm` model's inputs).

The 51 features of `wbc.cells.features` describe the colour of a cell in the 8-bit encodings of the
lab that took the picture: stain strength, illumination, camera white balance and resolution are all
in them. These features keep only what another lab's picture of the same cell also shows:

Per-image normalisation (colour). Each image gives its own white point I0 (per RGB channel, the
`WHITE_PERCENTILE` percentile of the pixels outside the nucleus' convex hull: the bright plasma
between the cells), and every pixel becomes an optical density OD_c = log((I0_c + 1) / (I_c + 1)),
clipped at 0. A per-channel gain (white balance, lamp brightness, exposure) multiplies I and I0 alike
and cancels. Under Beer-Lambert OD is stain concentration x absorption, so a thicker or stronger
stain scales every OD of the image by one factor: only ratios of ODs are kept, which cancel it.

Canonical framing (crop). The framing of a crop changes the segmentation (its colour balance and
thresholds are image-wide statistics: a tight crop that the cell fills is balanced differently from
a loose one with red cells and plasma). So the cell found by `segment` is cut out again as a square
of side `FRAME` x r around the hull's centroid (r = sqrt(hull area / pi)), the part beyond the image
filled with the white point, and re-segmented: a loose and a tight crop of one cell give nearly the
same masks (measured on PBC test cells cut to 2.6 r: circularity differs by 0.03 instead of 4).

Size normalisation (shape, texture). The frame is resampled so that the hull's equivalent radius is
`NORMAL_RADIUS` px (area interpolation when shrinking, linear when enlarging; masks follow), whatever
the camera's pixel size or the crop's resolution. Regions: the nucleus, the ROC (hull minus nucleus)
and two rings around the hull at distances `RINGS` x r (the cytoplasm beyond the hull, then the
cell's edge: how fast the density falls off says how much cytoplasm the cell has). A ring cut off by
the image border uses the pixels it has; an empty region gives NaN.

Features (`FEATURE_NAMES`, `N_FEATURES` = 30):
- shape (11): circularity P^2 / (4 pi A), convexity, solidity (`wbc.cells.features.shape_features`
  on the normalised mask), eccentricity of the nucleus and of the hull (from second moments),
  lobes (log of 1 + the number of nucleus components above `MIN_LOBE` of its area), thickness
  (mean inner distance to the nucleus boundary / equivalent radius of the nucleus), and the log
  of |Hu moments| 1..4 of the nucleus (signed);
- colour (3 x 3 + 3 x 3 = 18): for each of ROC and the two rings, its mean OD per channel / the
  nucleus' mean OD in that channel (relative density: invariant to a per-channel scaling of the OD,
  i.e. to a stain absorbing a little more or less in one band), and its OD chromaticity
  OD_c / sum(OD) minus the nucleus' (the hue of the cytoplasm relative to the nucleus);
- texture (1): granularity of the cytoplasm (ROC and first ring): the mean absolute difference
  between the summed OD and its Gaussian blur (sigma `GRAIN_SIGMA` x r), divided by its mean.
Left out, because they moved most on degraded copies of PBC test cells (in PBC-train standard
deviations): the nucleus' own chromaticity (0.6-1.6 under JPEG and 100 px crops; it is also what a
different stain recipe changes), the nucleus' granularity (2.1 at 100 px: resolution-bound), a
third ring beyond 0.6 r (mostly red cells and plasma: ~1 sd under tight crops, little class signal).

Undefined features are NaN: all of them when there is no nucleus (status `no_nucleus`, `bad_input`;
`unreadable` for undecodable bytes), those of an empty region (an empty ROC; a ring outside the
image), a ratio with a zero denominator. The status is the segmentation's (`wbc.cells.segment`) of
the image as given (`extract`: the same status as the Tavakoli features').

Cached per set as `<set>.invariant.npz` (`wbc.cells.features.set_file` with `KIND`) by the same batch
and file code as the Tavakoli features (`extract_rows`, `save_invariant`, `load_invariant`).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from wbc.cells import features as tavakoli_features
from wbc.cells.features import FeatureSet, shape_features
from wbc.cells.segment import Segmentation, as_rgb, segment
from wbc.core.errors import WbcError

#: The feature kind: names the cache files (`<set>.invariant.npz`) and the models that need them.
KIND = "invariant"
#: Equivalent radius (px) of the nucleus' convex hull after size normalisation.
NORMAL_RADIUS = 24.0
#: Percentile of the pixels outside the hull taken as the image's white point (per channel).
WHITE_PERCENTILE = 99.0
#: Fewest pixels outside the hull to estimate the white point from; else every pixel of the image.
MIN_BACKGROUND = 50
#: Side of the canonical frame the cell is re-segmented in, in equivalent radii of the hull.
FRAME = 5.0
#: Smallest side (px) of the canonical frame.
MIN_FRAME = 16
#: Rings around the hull: (inner, outer) distance from the hull, in equivalent radii of the hull.
RINGS = ((0.0, 0.25), (0.25, 0.6))
#: Nucleus components smaller than this fraction of the nucleus area are not counted as lobes.
MIN_LOBE = 0.05
#: Gaussian sigma of the granularity, in equivalent radii of the hull (2.4 px at NORMAL_RADIUS).
GRAIN_SIGMA = 0.1

SHAPE_NAMES = ("circularity", "convexity", "solidity", "nucleus_eccentricity", "hull_eccentricity", "log_lobes",
               "thickness", "log_hu1", "log_hu2", "log_hu3", "log_hu4")
OD_CHANNELS = ("R", "G", "B")
REGIONS = ("roc", *(f"ring{i + 1}" for i in range(len(RINGS))))
COLOUR_NAMES = (tuple(f"{r}_rel_od_{c}" for r in REGIONS for c in OD_CHANNELS)
                + tuple(f"{r}_chroma_shift_{c}" for r in REGIONS for c in OD_CHANNELS))
TEXTURE_NAMES = ("cytoplasm_grain",)
FEATURE_NAMES = SHAPE_NAMES + COLOUR_NAMES + TEXTURE_NAMES
N_FEATURES = len(FEATURE_NAMES)  # 30


# ----------------------------------------------------------------------------- normalisation


def white_point(rgb: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """Per-channel white point (float64 (3,)): the WHITE_PERCENTILE percentile of the pixels outside
    `hull`, or of all pixels when fewer than MIN_BACKGROUND lie outside it."""
    outside = ~hull
    pixels = rgb[outside] if np.count_nonzero(outside) >= MIN_BACKGROUND else rgb.reshape(-1, 3)
    return np.percentile(pixels.astype(np.float64), WHITE_PERCENTILE, axis=0)


def optical_density(rgb: np.ndarray, white: np.ndarray) -> np.ndarray:
    """OD = log((I0 + 1) / (I + 1)) per channel (float32 HxWx3), clipped at 0."""
    od = np.log((white.astype(np.float32) + 1.0) / (rgb.astype(np.float32) + 1.0))
    return np.maximum(od, 0.0, out=od)


def canonical_frame(rgb: np.ndarray, hull: np.ndarray, white: np.ndarray) -> np.ndarray:
    """The square of side FRAME x r centred on the hull's centroid (r: its equivalent radius), the
    part outside the image filled with the white point: every crop of a cell, loose or tight, becomes
    the same framing, so that the segmentation's image-wide statistics (colour balance, thresholds)
    see the same proportions of cell and background."""
    ys, xs = np.nonzero(hull)
    half = max(MIN_FRAME // 2, int(round(FRAME / 2 * np.sqrt(len(ys) / np.pi))))
    cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    canvas = np.empty((2 * half, 2 * half, 3), np.uint8)
    canvas[:] = np.clip(np.round(white), 0, 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    y0, x0 = cy - half, cx - half
    sy0, sx0, sy1, sx1 = max(0, y0), max(0, x0), min(h, y0 + 2 * half), min(w, x0 + 2 * half)
    canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return canvas


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def normalised(rgb: np.ndarray, nucleus: np.ndarray, hull: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(RGB float32, nucleus mask, hull mask) of the crop around the hull (margin: the outer ring),
    resampled so that the hull's equivalent radius is NORMAL_RADIUS px; and the scale applied."""
    radius = np.sqrt(np.count_nonzero(hull) / np.pi)
    scale = NORMAL_RADIUS / max(radius, 1e-9)
    x, y, w, h = cv2.boundingRect(hull.view(np.uint8))
    m = int(np.ceil(RINGS[-1][1] * radius)) + 2
    box = (slice(max(0, y - m), y + h + m), slice(max(0, x - m), x + w + m))
    crop = _resize(np.ascontiguousarray(rgb[box], dtype=np.float32), scale)
    masks = [_resize(np.ascontiguousarray(a[box], dtype=np.float32), scale) > 0.5 for a in (nucleus, hull)]
    return crop, masks[0], masks[1] | masks[0], scale


# ----------------------------------------------------------------------------- shape


def _eccentricity(mask: np.ndarray) -> float:
    """sqrt(1 - minor / major) of the second central moments' eigenvalues (0 for a disc)."""
    m = cv2.moments(mask.view(np.uint8), binaryImage=True)
    if m["m00"] <= 0:
        return np.nan
    a, b, c = m["mu20"] / m["m00"], m["mu11"] / m["m00"], m["mu02"] / m["m00"]
    root = np.sqrt(((a - c) / 2) ** 2 + b ** 2)
    major, minor = (a + c) / 2 + root, (a + c) / 2 - root
    return float(np.sqrt(max(0.0, 1.0 - minor / major))) if major > 0 else np.nan


def shape_of(nucleus: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """The 11 shape features (SHAPE_NAMES) of size-normalised nucleus and hull masks."""
    out = np.full(len(SHAPE_NAMES), np.nan)
    area = np.count_nonzero(nucleus)
    if not area:
        return out
    out[:3] = shape_features(nucleus)
    out[3], out[4] = _eccentricity(nucleus), _eccentricity(hull)
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(nucleus.view(np.uint8), connectivity=8)
    out[5] = np.log1p(np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] >= MIN_LOBE * area))
    inner = cv2.distanceTransform(np.pad(nucleus.view(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    out[6] = float(inner[nucleus].mean()) / np.sqrt(area / np.pi)
    hu = cv2.HuMoments(cv2.moments(nucleus.view(np.uint8), binaryImage=True)).ravel()[:4]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[7:] = np.where(hu != 0, -np.sign(hu) * np.log10(np.abs(hu)), np.nan)
    return out


# ----------------------------------------------------------------------------- colour, texture


def _regions(nucleus: np.ndarray, hull: np.ndarray) -> list[np.ndarray]:
    """ROC and the RINGS around the hull (boolean masks of the normalised crop)."""
    dist = cv2.distanceTransform((~hull).view(np.uint8), cv2.DIST_L2, 5)
    rings = [(dist > lo * NORMAL_RADIUS) & (dist <= hi * NORMAL_RADIUS) & ~hull for lo, hi in RINGS]
    return [hull & ~nucleus, *rings]


def _mean(od: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return od[mask].mean(axis=0) if mask.any() else np.full(od.shape[-1] if od.ndim == 3 else 1, np.nan)


def _divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, np.asarray(a, np.float64) / np.where(b > 0, b, 1.0), np.nan)


def colour_of(od: np.ndarray, nucleus: np.ndarray, regions: list[np.ndarray]) -> np.ndarray:
    """The 18 colour features (COLOUR_NAMES) of a normalised OD image."""
    nuc = _mean(od, nucleus)
    chroma = _divide(nuc, nuc.sum())
    means = [_mean(od, r) for r in regions]
    rel = [_divide(m, nuc) for m in means]
    shift = [_divide(m, m.sum()) - chroma for m in means]
    return np.concatenate([*rel, *shift])


def texture_of(od: np.ndarray, cytoplasm: np.ndarray) -> np.ndarray:
    """Granularity of the cytoplasm: mean |OD - blur(OD)| / mean OD (summed OD), NaN when empty."""
    total = od.sum(axis=2)
    detail = np.abs(total - cv2.GaussianBlur(total, (0, 0), GRAIN_SIGMA * NORMAL_RADIUS))
    return np.array([_divide(detail[cytoplasm].mean(), total[cytoplasm].mean()) if cytoplasm.any() else np.nan])


# ----------------------------------------------------------------------------- one image


def features_of(seg: Segmentation, rgb: np.ndarray) -> np.ndarray:
    """The N_FEATURES invariant features (float64) of the segmentation `seg` of `rgb` (the uint8 RGB
    image that was segmented, not the colour-balanced one); all NaN when no nucleus was found.
    The white point comes from `rgb`; the cell is then re-segmented in its `canonical_frame` (when
    that finds no nucleus, `seg` is used)."""
    out = np.full(N_FEATURES, np.nan)
    if not seg.found:
        return out
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != seg.nucleus.shape:
        raise WbcError(f"invariant features: image {rgb.shape[:2]} and masks {seg.nucleus.shape} differ")
    white = white_point(rgb, seg.hull)
    frame = canonical_frame(rgb, seg.hull, white)
    framed = segment(frame)
    if framed.found:
        rgb, seg = frame, framed
    crop, nucleus, hull, _scale = normalised(rgb, seg.nucleus, seg.hull)
    if not nucleus.any():
        return out
    od = optical_density(crop, white)
    regions = _regions(nucleus, hull)
    ns, nc = len(SHAPE_NAMES), len(COLOUR_NAMES)
    out[:ns] = shape_of(nucleus, hull)
    out[ns:ns + nc] = colour_of(od, nucleus, regions)
    out[ns + nc:] = texture_of(od, regions[0] | regions[1])
    return out


def extract(rgb: np.ndarray) -> tuple[np.ndarray, str]:
    """(N_FEATURES invariant features float64, NaN where undefined; status) of one RGB(A) image."""
    seg = segment(rgb)
    if not seg.found:
        return np.full(N_FEATURES, np.nan), seg.status
    return features_of(seg, as_rgb(rgb)), seg.status


def extract_bytes(data: bytes) -> tuple[np.ndarray, str]:
    """`extract` of an encoded image; (all NaN, "unreadable") when it does not decode."""
    return tavakoli_features.extract_encoded(data, extract, N_FEATURES)


# ----------------------------------------------------------------------------- many images, files


def extract_rows(rows: pd.DataFrame, store_root: str | Path, workers: int = 0, progress: bool = True,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Invariant features of manifest rows of the image store: (X float32 (n, N_FEATURES), status)."""
    return tavakoli_features.extract_rows(rows, store_root, workers=workers, progress=progress,
                                          extractor=extract_bytes, n_features=N_FEATURES, desc="invariant features")


def save_invariant(path: str | Path, X: np.ndarray, status, ids, labels) -> Path:
    """Write one set's invariant features to one .npz (arrays only, as `save_features`)."""
    return tavakoli_features.save_features(path, X, status, ids, labels, names=FEATURE_NAMES)


def load_invariant(path: str | Path) -> FeatureSet:
    """Read a file written by `save_invariant` (no pickle); WbcError when it is not one or is stale."""
    return tavakoli_features.load_features(path, names=FEATURE_NAMES)
