"""The red cells of a blood-smear image as a ruler: their typical diameter in pixels.

Red cells are about 7.5 µm across in every healthy smear, whatever the microscope, camera and
crop; a white cell's size relative to them is a physical property (a small lymphocyte is about
one red cell wide, a monocyte two or more). `red_cell_diameter(rgb, exclude=...)` measures them so
that `wbc.cells.cellcrop` can scale every lab's images to the same number of pixels per red cell.

Method: circles found by OpenCV's gradient Hough transform (`cv2.HOUGH_GRADIENT_ALT`, which scores
each candidate by how well it fits a circle) on a contrast-stretched grey copy whose shorter side is
`WORK_SIDE` px, shrunk or enlarged to it (so the blur, the edge detector and the radius bounds are the
same fractions of the image at every resolution: a 64-px smear photo is measured like a 360-px one);
radii between `MIN_RADIUS` and `MAX_RADIUS` of that side. Circles centred inside the
white cell's box (`exclude`) are its outline, not red cells; a circle centred inside a larger one is
the central pallor of the same red cell (or a ghost of it) and is dropped. The red cells of one smear
share one size (red-cell distribution width, the diameter's CV, is 11.5-14.5 % in health), so only
circles within a factor `AGREEMENT` of the median circle count: the diameter is their median (robust
to a few touching or overlapping red cells found as one), and None when fewer than `MIN_RED_CELLS`
agree (e.g. a crop filled by the white cell, where the circles found are arcs of its outline and of
cut-off neighbours, of every size): the caller falls back and counts it. Every bound is a fraction
of the image side: no lab's pixel size is built in.
"""
from __future__ import annotations

import cv2
import numpy as np

#: Circles are searched on a copy whose shorter side is this many pixels (speed, scale-free constants).
WORK_SIDE = 256
#: Radius bounds of a red cell, as fractions of the image's shorter side.
MIN_RADIUS, MAX_RADIUS = 1.0 / 40.0, 1.0 / 5.0
#: Fewer red cells than this: no reliable diameter.
MIN_RED_CELLS = 3
#: Circles whose diameter is more than this factor from the median circle's are not red cells of the
#: same smear (4/3: beyond 2 CV of the red-cell size spread of a healthy smear).
AGREEMENT = 4.0 / 3.0
#: `HOUGH_GRADIENT_ALT` circle-fit score threshold (0..1; 1 = a perfect circle) and Canny upper threshold.
CIRCLE_SCORE, CANNY_HIGH = 0.6, 100


def _grey(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The image's grey copy with its shorter side resampled to `WORK_SIDE` (area interpolation to
    shrink, cubic to enlarge), contrast-stretched between its 1st and 99th percentiles and slightly
    blurred, and the scale factor from the image to it."""
    h, w = rgb.shape[:2]
    scale = WORK_SIDE / min(h, w)
    if scale != 1.0:
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
        rgb = cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=interpolation)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    lo, hi = np.percentile(grey, (1, 99))
    grey = np.clip((grey - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(grey, (0, 0), 1.5), scale


def drop_nested(circles: np.ndarray) -> np.ndarray:
    """(n, 3) circles (x, y, r) without those centred inside a larger circle (a red cell's pallor)."""
    if len(circles) < 2:
        return circles
    x, y, r = circles[:, 0], circles[:, 1], circles[:, 2]
    dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    inside_larger = (dist < r[None, :]) & (r[None, :] > r[:, None])
    return circles[~inside_larger.any(axis=1)]


def find_red_cells(rgb: np.ndarray, exclude: tuple[float, float, float] | None = None) -> np.ndarray:
    """(n, 3) float circles (x, y, radius), in the image's pixels, of the red cells of an HxWx3 uint8
    image; `exclude` = (centre x, centre y, side) of the white cell's box, whose circles are dropped."""
    if min(rgb.shape[:2]) * MAX_RADIUS < 3:   # too small to hold a red cell of a few pixels
        return np.zeros((0, 3), np.float64)
    grey, scale = _grey(rgb)
    side = min(grey.shape)
    found = cv2.HoughCircles(grey, cv2.HOUGH_GRADIENT_ALT, dp=1.5, minDist=side * MIN_RADIUS,
                             param1=CANNY_HIGH, param2=CIRCLE_SCORE,
                             minRadius=max(2, int(side * MIN_RADIUS)), maxRadius=int(side * MAX_RADIUS))
    circles = np.zeros((0, 3), np.float64) if found is None else found[0].astype(np.float64) / scale
    if exclude is not None and len(circles):
        cx, cy, box = exclude
        circles = circles[(np.abs(circles[:, 0] - cx) > box / 2) | (np.abs(circles[:, 1] - cy) > box / 2)]
    return drop_nested(circles)


def median_diameter(circles: np.ndarray) -> float | None:
    """The median diameter of the (n, 3) circles that agree in size (within `AGREEMENT` of the median
    circle's), or None when fewer than `MIN_RED_CELLS` agree."""
    if len(circles) < MIN_RED_CELLS:
        return None
    d = 2.0 * circles[:, 2]
    centre = np.median(d)
    agreeing = d[(d >= centre / AGREEMENT) & (d <= centre * AGREEMENT)]
    return float(np.median(agreeing)) if len(agreeing) >= MIN_RED_CELLS else None


def red_cell_diameter(rgb: np.ndarray, exclude: tuple[float, float, float] | None = None) -> float | None:
    """The median red-cell diameter in pixels, or None with fewer than `MIN_RED_CELLS` red cells."""
    return median_diameter(find_red_cells(rgb, exclude))
