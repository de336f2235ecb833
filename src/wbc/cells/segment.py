"""Nucleus segmentation of Tavakoli et al. (Sci Rep 11:19428, 2021), written from its description.

    segment(rgb) -> Segmentation(nucleus, hull, roc, status, ...)

1. Colour balance (`colour_balance`): each RGB channel is scaled by mean(grey) / mean(channel),
   saturating at 255 (grey = ITU-R 601 luma, so mean(grey) = 0.299 mR + 0.587 mG + 0.114 mB).
2. Nucleus image (`nucleus_image`), from CMYK's M and K and HLS's S of the balanced image, all on a
   0..255 scale: ``N = min(M, S) - min(min(M, S), K - min(K, M))`` (saturating uint8 arithmetic),
   then a 5x5 Gaussian blur (3x3 for images under 200 px a side).
3. Threshold (`nucleus_mask`): Otsu over the pixels where N > 0 (the formula's support: it sets
   background and red cells to exactly 0). Deviation from the paper, which runs Otsu over the whole
   image: there the zeros (~90 % of a PBC image) dominate and the threshold separates *stained* from
   unstained pixels, which puts eosinophil/basophil granules and monocyte/lymphocyte cytoplasm into
   the "nucleus"; restricted to the support, Otsu separates cytoplasm from nucleus.
   A threshold "fails" when the two Otsu classes differ by less than `MIN_CONTRAST` grey levels (no
   stain signal: blank, uniform or grey images) or the mask is empty or covers more than
   `MAX_FRACTION` of the image; then the fallback of the paper is tried: Otsu over the whole blurred M
   channel (status flag `m_fallback`). When both fail there is no nucleus (`no_nucleus`).
4. Clean-up: connected components (8-connectivity) larger than a tenth of the largest are kept (the
   paper), except components touching the image border other than the central one (the component
   nearest the image centre): they are neighbouring cells cut by the crop. Then a morphological
   closing (disc of radius `CLOSE_FRACTION` x sqrt(area)) smooths the boundary where pale chromatin
   meets it, and holes smaller than `HOLE_FRACTION` of the nucleus area are filled (chromatin
   texture; a ring-shaped band nucleus keeps its large hole).
5. Convex hull of the nucleus pixels (`convex_hull_mask`), ROC = hull minus nucleus (the cytoplasm
   inside the hull).

Degenerate inputs get a defined result (`STATUSES`): `bad_input` (not an HxWx3/HxWx4 uint8 array
of at least `MIN_SIDE` pixels a side; masks empty) and `no_nucleus` (masks empty) are exclusive;
otherwise the status is "ok" or the flags that apply joined by "+" in `FLAGS` order, e.g.
"touches_border+empty_roc". RGBA input is composited on white (as `wbc.data.store.to_rgb` does).
Everything scales with the image: no size constant except the blur and MIN_SIDE.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Images smaller than this (either side, pixels) are `bad_input`.
MIN_SIDE = 8
#: Minimum difference between the two Otsu class means (grey levels of 0..255) for a usable threshold.
#: Real stains give ~100 on PBC; this only rejects images without stain signal (JPEG noise is < 10).
MIN_CONTRAST = 20.0
#: A nucleus covering more than this fraction of the image is not a nucleus (the threshold failed).
MAX_FRACTION = 0.9
#: Components smaller than this fraction of the largest are dropped (the paper: a tenth).
MIN_COMPONENT = 0.1
#: Components farther than this many equivalent radii of the central component (gap between their
#: outlines) are dropped: platelets and fragments of neighbouring cells beside the white cell; the
#: lobes of one nucleus lie much closer to each other.
MAX_GAP = 0.8
#: Holes smaller than this fraction of the nucleus area are filled.
HOLE_FRACTION = 0.1
#: Radius of the morphological closing, as a fraction of sqrt(nucleus area) (~5 % of the equivalent
#: radius, 2 px on PBC): smooths the boundary where pale chromatin meets it; only gaps narrower than
#: twice that (thin chromatin strands between lobes) are bridged.
CLOSE_FRACTION = 0.03
#: Gaussian blur of the nucleus image: the paper's 5x5, and 3x3 for images under SMALL_SIDE pixels
#: a side (measured on real PBC cells shrunk to 64 and 96 px: the 3x3 mask agrees better with the
#: full-size one, Dice +0.005..0.015 per class).
BLUR, SMALL_BLUR, SMALL_SIDE = (5, 5), (3, 3), 200

#: Exclusive outcomes (masks all empty).
BAD_INPUT, NO_NUCLEUS = "bad_input", "no_nucleus"
#: Flags of a found nucleus, in the order they are joined ("+") in a status.
FLAGS = ("m_fallback", "touches_border", "empty_roc")
#: Every single word a status is made of ("ok" alone means no flag).
STATUSES = ("ok", BAD_INPUT, NO_NUCLEUS, *FLAGS)


@dataclass(frozen=True)
class Segmentation:
    """Result of `segment`: boolean HxW masks (empty for `bad_input` / `no_nucleus`) and the status.

    `balanced` is the colour-balanced uint8 RGB image (None for `bad_input`); `source` says which
    image was thresholded ("nucleus_image", "m_channel" or "" when none) and `threshold` at which level.
    """

    nucleus: np.ndarray
    hull: np.ndarray
    roc: np.ndarray
    status: str
    balanced: np.ndarray | None = None
    source: str = ""
    threshold: float = float("nan")

    @property
    def flags(self) -> frozenset[str]:
        """The words of the status (`{"ok"}` when nothing to report)."""
        return frozenset(self.status.split("+"))

    @property
    def found(self) -> bool:
        """A nucleus was found (features can be computed)."""
        return self.status not in (BAD_INPUT, NO_NUCLEUS)


def join_flags(flags: set[str] | frozenset[str]) -> str:
    """Status text of a set of flags: "ok" when empty, else the flags in `FLAGS` order joined by "+"."""
    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown segmentation flags {sorted(unknown)}; valid: {FLAGS}")
    return "+".join(f for f in FLAGS if f in flags) or "ok"


# ----------------------------------------------------------------------------- input


def as_rgb(image: np.ndarray) -> np.ndarray | None:
    """A C-contiguous HxWx3 uint8 RGB array, or None when `image` is not a usable colour image.

    Accepts HxWx3 and HxWx4 (alpha composited on white) uint8 arrays of at least MIN_SIDE a side;
    greyscale (2-D or one channel), other dtypes, empty and tiny arrays give None.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < MIN_SIDE:
        return None
    if a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        a = np.rint(a[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- colour


def colour_balance(rgb: np.ndarray) -> np.ndarray:
    """Scale each channel by mean(grey) / mean(channel), rounded, saturating at 255 (a channel that is
    all 0 stays 0)."""
    means = np.array(cv2.mean(rgb)[:3])
    grey = float(means @ np.array([0.299, 0.587, 0.114]))
    scale = np.where(means > 0, grey / np.maximum(means, 1e-12), 1.0)
    return cv2.transform(rgb, np.diag(scale))


def cmyk_mk(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CMYK magenta and black of a uint8 RGB image on 0..255: K = 255 - max, M = 255 (max - G) / max."""
    r, g, b = cv2.split(rgb)  # contiguous planes: OpenCV's element-wise ops are several times faster on them
    mx = cv2.max(cv2.max(r, g), b)
    m = cv2.divide(cv2.subtract(mx, g), mx, scale=255)  # x / 0 -> 0 in OpenCV
    return m, cv2.bitwise_not(mx)


def nucleus_image(balanced: np.ndarray) -> np.ndarray:
    """The paper's nucleus image ``min(M, S) - min(min(M, S), K - min(K, M))`` (uint8, not blurred)."""
    m, k = cmyk_mk(balanced)
    s = cv2.cvtColor(balanced, cv2.COLOR_RGB2HLS)[:, :, 2]
    ms = cv2.min(m, s)
    km = cv2.subtract(k, cv2.min(k, m))
    return cv2.subtract(ms, cv2.min(ms, km))


# ----------------------------------------------------------------------------- threshold


def otsu(image: np.ndarray, support: np.ndarray | None = None) -> tuple[float, float]:
    """Otsu threshold of a uint8 image (its `support` pixels only, when given) and the difference of
    the two class means (0 when undefined: fewer than two distinct values)."""
    values = image.ravel() if support is None else image[support]
    hist = np.bincount(values, minlength=256).astype(np.float64)
    n = hist.sum()
    if n == 0:
        return 0.0, 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    s0 = np.cumsum(hist * levels)
    w1, s1 = n - w0, s0[-1] - s0
    with np.errstate(divide="ignore", invalid="ignore"):
        m0, m1 = s0 / w0, s1 / w1
        between = w0 * w1 * (m0 - m1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1.0
    t = int(np.argmax(between))
    if between[t] <= 0:
        return float(t), 0.0
    return float(t), float(m1[t] - m0[t])


def _threshold(blurred: np.ndarray, support: np.ndarray | None) -> tuple[np.ndarray | None, float]:
    """(pixels above the Otsu threshold of the `support` pixels (all when None) or None on failure, threshold)."""
    t, contrast = otsu(blurred, support)
    if contrast < MIN_CONTRAST:
        return None, t
    mask = blurred > t
    if support is not None:
        mask &= support
    return (mask if 0 < np.count_nonzero(mask) <= MAX_FRACTION * mask.size else None), t


def _contours(mask: np.ndarray, mode: int) -> tuple[list[np.ndarray], np.ndarray]:
    """OpenCV contours of a boolean mask and their parent index (-1 for outer boundaries)."""
    contours, hierarchy = cv2.findContours(mask.view(np.uint8), mode, cv2.CHAIN_APPROX_SIMPLE)
    parents = hierarchy[0][:, 3] if contours else np.zeros(0, int)
    return list(contours), parents


def _pixel_area(contour: np.ndarray) -> float:
    """Approximate pixel count of the region inside a contour (polygon area + half the perimeter + 1)."""
    return cv2.contourArea(contour) + cv2.arcLength(contour, True) / 2 + 1


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between the points of two contours (pixels)."""
    d = a.reshape(-1, 1, 2).astype(np.float64) - b.reshape(1, -1, 2)
    return float(np.sqrt((d ** 2).sum(axis=2).min()))


def _components(mask: np.ndarray) -> np.ndarray:
    """Keep components (8-connected, found by their outer contours) larger than MIN_COMPONENT x the
    largest, except those touching the border that are not the central one (the one containing, or
    else nearest to, the image centre) and those farther from the central one than MAX_GAP of its
    equivalent radius."""
    outer, _ = _contours(mask, cv2.RETR_EXTERNAL)
    if len(outer) <= 1:
        return mask
    h, w = mask.shape
    area = np.array([_pixel_area(c) for c in outer])
    keep = area > MIN_COMPONENT * area.max()
    centre = ((w - 1) / 2, (h - 1) / 2)
    inside = np.array([cv2.pointPolygonTest(c, centre, True) if k else -np.inf for c, k in zip(outer, keep)])
    rects = np.array([cv2.boundingRect(c) for c in outer])
    border = (rects[:, 0] == 0) | (rects[:, 1] == 0) | (rects[:, 0] + rects[:, 2] == w) | (rects[:, 1] + rects[:, 3] == h)
    main = int(np.argmax(inside))
    keep &= ~border | (np.arange(len(outer)) == main)
    limit = MAX_GAP * np.sqrt(area[main] / np.pi)
    keep &= np.array([i == main or not k or _gap(c, outer[main]) <= limit for i, (c, k) in enumerate(zip(outer, keep))])
    kept = np.zeros((h, w), np.uint8)
    cv2.drawContours(kept, [c for c, k in zip(outer, keep) if k], -1, 1, thickness=cv2.FILLED)
    return mask & kept.view(bool)


def fill_small_holes(mask: np.ndarray, fraction: float = HOLE_FRACTION) -> np.ndarray:
    """Fill the holes of `mask` (background enclosed by it) smaller than `fraction` of the mask's area."""
    contours, parents = _contours(mask, cv2.RETR_CCOMP)
    limit = fraction * np.count_nonzero(mask)
    small = [c for c, p in zip(contours, parents) if p >= 0 and cv2.contourArea(c) < limit]
    if not small:
        return mask
    out = mask.astype(np.uint8)
    cv2.drawContours(out, small, -1, 1, thickness=cv2.FILLED)
    return out.view(bool)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of the True pixels of `mask` grown by `margin` (clipped to the image)."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return (slice(max(0, y - margin), y + h + margin), slice(max(0, x - margin), x + w + margin))


def close(mask: np.ndarray, fraction: float = CLOSE_FRACTION) -> np.ndarray:
    """Morphological closing with a disc of radius `fraction` x sqrt(area) (at least 1 px)."""
    r = max(1, int(round(fraction * np.sqrt(np.count_nonzero(mask)))))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    padded = cv2.copyMakeBorder(mask.view(np.uint8), r, r, r, r, cv2.BORDER_CONSTANT, value=0)
    return np.ascontiguousarray(cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disc)[r:-r, r:-r]).view(bool)


def nucleus_mask(balanced: np.ndarray) -> tuple[np.ndarray, str, float]:
    """(nucleus mask, source, threshold) of a colour-balanced image; source "" and an empty mask when
    neither the nucleus image nor the M fallback gives a usable threshold."""
    n_img = nucleus_image(balanced)
    ksize = SMALL_BLUR if min(balanced.shape[:2]) < SMALL_SIDE else BLUR
    blurred = cv2.GaussianBlur(n_img, ksize, 0)
    mask, t = _threshold(blurred, n_img > 0)
    source = "nucleus_image"
    if mask is None:
        blurred = cv2.GaussianBlur(cmyk_mk(balanced)[0], ksize, 0)
        mask, t = _threshold(blurred, None)
        source = "m_channel"
    if mask is None:
        return np.zeros(balanced.shape[:2], bool), "", float("nan")
    mask = _components(mask)
    box = _box(mask, int(np.ceil(CLOSE_FRACTION * np.sqrt(np.count_nonzero(mask)))) + 2)
    mask[box] = fill_small_holes(close(np.ascontiguousarray(mask[box])))
    return mask, source, t


# ----------------------------------------------------------------------------- hull, ROC


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull (through pixel centres, boundary included) of the True pixels of `mask`."""
    hull = np.zeros(mask.shape, np.uint8)
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w and h:
        crop = np.ascontiguousarray(mask[y:y + h, x:x + w]).view(np.uint8)
        outer, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
        cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(outer)), 1)
    return hull.view(bool) | mask


def touches_border(mask: np.ndarray) -> bool:
    """Any True pixel on the first/last row or column."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def empty(shape: tuple[int, ...], status: str, balanced: np.ndarray | None = None) -> Segmentation:
    """A Segmentation with empty masks (bad input, no nucleus)."""
    z = np.zeros(shape[:2] if len(shape) >= 2 else (0, 0), bool)
    return Segmentation(z, z.copy(), z.copy(), status, balanced)


def segment(image: np.ndarray) -> Segmentation:
    """Nucleus, convex hull and ROC masks of one cell image (HxWx3 uint8 RGB; see the module doc)."""
    rgb = as_rgb(image)
    if rgb is None:
        return empty(np.shape(image), BAD_INPUT)
    balanced = colour_balance(rgb)
    nucleus, source, t = nucleus_mask(balanced)
    if not nucleus.any():
        return empty(rgb.shape, NO_NUCLEUS, balanced)
    hull = convex_hull_mask(nucleus)
    roc = hull & ~nucleus
    flags = {"m_fallback"} if source == "m_channel" else set()
    if touches_border(nucleus):
        flags.add("touches_border")
    if not roc.any():
        flags.add("empty_roc")
    return Segmentation(nucleus, hull, roc, join_flags(flags), balanced, source, t)
