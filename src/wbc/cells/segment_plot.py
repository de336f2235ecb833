"""A picture of the segmentation (`wbc.cells.segment`): cells with the nucleus outline and the convex hull.

    segmentation_figure(images, labels, out_path, title)

One grid PNG (matplotlib, Agg canvas: no display, no global backend change): one row per distinct
label (in order of first appearance, e.g. "test: basophil"), the label's cells left to right, each
with its status under it. The nucleus outline is drawn in yellow, the convex hull in cyan.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wbc.cells.segment import Segmentation, segment

NUCLEUS_COLOUR = (255, 220, 0)
HULL_COLOUR = (0, 200, 255)
CELL_INCHES = 1.6


def draw_segmentation(rgb: np.ndarray, seg: Segmentation) -> np.ndarray:
    """A copy of `rgb` (HxWx3 uint8) with the nucleus outline and the hull outline drawn on it."""
    out = np.ascontiguousarray(np.asarray(rgb, np.uint8)[:, :, :3]).copy()
    if not seg.found or seg.nucleus.shape != out.shape[:2]:
        return out
    thickness = max(1, round(min(out.shape[:2]) / 180))
    for mask, colour in ((seg.hull, HULL_COLOUR), (seg.nucleus, NUCLEUS_COLOUR)):
        contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def _as_pair(item: np.ndarray | tuple[np.ndarray, Segmentation]) -> tuple[np.ndarray, Segmentation]:
    """(rgb, segmentation) of an RGB array (segmented here) or of an (rgb, segmentation) pair."""
    if isinstance(item, tuple):
        return np.asarray(item[0]), item[1]
    rgb = np.asarray(item)
    return rgb, segment(rgb)


def _displayable(rgb: np.ndarray) -> np.ndarray:
    """Something imshow can show for any input `segment` accepts or refuses (grey, tiny, RGBA)."""
    a = np.asarray(rgb)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.size == 0:
        return np.full((8, 8, 3), 255, np.uint8)
    return np.clip(a[:, :, :3], 0, 255).astype(np.uint8)


def segmentation_figure(images: Sequence[np.ndarray | tuple[np.ndarray, Segmentation]], labels: Sequence[str],
                        out_path: str | Path, title: str = "") -> Path:
    """Save a grid of cells with their segmentation drawn: one row per distinct label, in order.

    `images[i]` is an HxWx3 uint8 RGB array (segmented here) or an (rgb, Segmentation) pair;
    `labels[i]` names its row. Returns the PNG path.
    """
    if len(images) != len(labels):
        raise ValueError(f"segmentation_figure: {len(images)} images but {len(labels)} labels")
    rows: dict[str, list[tuple[np.ndarray, Segmentation]]] = {}
    for item, label in zip(images, labels):
        rows.setdefault(str(label), []).append(_as_pair(item))
    ncols = max((len(v) for v in rows.values()), default=1)
    fig = Figure(figsize=(CELL_INCHES * ncols + 1.6, CELL_INCHES * max(len(rows), 1) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(rows), 1), ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (label, cells) in enumerate(rows.items()):
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
        for c, (rgb, seg) in enumerate(cells):
            shown = draw_segmentation(rgb, seg) if seg.found else _displayable(rgb)
            axes[r, c].imshow(shown, interpolation="nearest")
            axes[r, c].set_title(seg.status, fontsize=6, y=-0.14)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=1.5 / (CELL_INCHES * ncols + 1.6), right=0.99, top=0.9 if title else 0.98,
                        bottom=0.04, wspace=0.05, hspace=0.25)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", metadata={"Software": None})
    return out_path
