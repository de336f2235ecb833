"""Cell-centred square crops: the white cell fills the same fraction of every crop, whatever the lab.

PBC fields are 360 px wide with the cell filling about a third of the side; other labs crop
tighter or wider. A CNN that learned the PBC scale misreads the others. `crop_with_path` is the ONE
function that turns a decoded image into the model's uint8 (3, S, S) input and names the crop path
it took (`PATHS`: the mode's own, or a fallback; `crop_square` says whether it fell back), at packing time
(`wbc.dataset.pack.pack`), at evaluation time (external folders, `wbc.dataset.external`) and in `wbc predict`
(`wbc.results.predictors.CnnPredictor.prepare`):

- `crop="centre"`: the centre square (the historical behaviour, `wbc.dataset.pack.square_resize`);
- `crop="cell"`: find the white cell (`cell_box`), take the square centred on it whose side is
  the cell's side / `fraction`, pad it with the background colour where it leaves the image, and
  resize. When no cell is found the centre square is used and the caller counts the fallback.
- `crop="rbc"`: the square centred on the white cell whose side is `span` red-cell diameters
  (`wbc.cells.redcells`): every lab's image arrives at the same number of pixels per red cell, so the
  white cell keeps its size relative to the red cells (lymphocyte about one red cell, monocyte two
  or more), which the `cell` crop normalises away. Where the red cells cannot be measured (fewer
  than `wbc.cells.redcells.MIN_RED_CELLS`, e.g. a crop filled by the white cell) the `cell` crop is used,
  and where no cell is found the centre square; both are counted as fallbacks.

`cell_box`: the nucleus of `wbc.cells.segment.segment` (Tavakoli et al.; found on a copy at most
`WORK_SIDE` px a side), its convex hull, grown by `CELL_MARGIN` of the hull's side on every side
(the cytoplasm rim around the nucleus); the cell box is the square around that. No threshold
depends on a dataset: everything scales with the nucleus found.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from wbc.core.errors import ConfigError
from wbc.cells.redcells import red_cell_diameter
from wbc.cells.segment import segment

#: The crop modes (params `split.crop`).
CROPS = ("centre", "cell", "rbc")
#: The paths a crop can take (`crop_with_path`): the mode's own, or a fallback (rbc -> cell -> centre).
PATHS = ("rbc", "cell", "centre")
#: Default fraction of the crop side the cell spans (params `split.cell_fraction`).
DEFAULT_FRACTION = 0.6
#: Default side of an `rbc` crop in red-cell diameters (params `split.rbc_span`): a large monocyte
#: (about 2.5 red cells) nearly fills it, a small lymphocyte spans about 40 % of it.
DEFAULT_SPAN = 2.5
#: The nucleus is searched on a copy whose shorter side is at most this many pixels (speed).
WORK_SIDE = 256
#: The cell = the nucleus hull's bounding box grown by this fraction of its side on each side.
CELL_MARGIN = 0.15
#: A nucleus hull smaller than this fraction of the image side is not a white cell (debris).
MIN_CELL_SIDE = 0.04


@dataclass(frozen=True)
class CropSpec:
    """How images become model inputs: `mode` (centre | cell | rbc), the cell's `fraction` of the side
    (`cell`, and `rbc`'s fallback) and the side in red-cell diameters (`span`, `rbc`)."""

    mode: str = "centre"
    fraction: float = DEFAULT_FRACTION
    span: float = DEFAULT_SPAN

    def __post_init__(self) -> None:
        if self.mode not in CROPS:
            raise ConfigError(f"crop must be one of {', '.join(CROPS)}; got {self.mode!r}")
        if not 0.05 <= float(self.fraction) <= 1.0:
            raise ConfigError(f"cell_fraction must be in [0.05, 1]; got {self.fraction!r}")
        if not 1.0 <= float(self.span) <= 10.0:
            raise ConfigError(f"rbc_span must be in [1, 10] red-cell diameters; got {self.span!r}")

    @classmethod
    def from_meta(cls, meta: dict | None) -> "CropSpec":
        """From a packed meta.json / checkpoint params (`crop`, `cell_fraction`, `rbc_span`); centre
        when absent."""
        meta = meta or {}
        return cls(str(meta.get("crop") or "centre"), float(meta.get("cell_fraction") or DEFAULT_FRACTION),
                   float(meta.get("rbc_span") or DEFAULT_SPAN))

    def to_dict(self) -> dict:
        """`{"crop": mode, "cell_fraction": fraction}` (+ `"rbc_span"` for `rbc` crops; meta.json,
        checkpoint params)."""
        spec = {"crop": self.mode, "cell_fraction": float(self.fraction)}
        return {**spec, "rbc_span": float(self.span)} if self.mode == "rbc" else spec


def cell_box(rgb: np.ndarray) -> tuple[float, float, float] | None:
    """(centre x, centre y, side) in pixels of the white cell of an HxWx3 uint8 image, or None."""
    h, w = rgb.shape[:2]
    scale = min(1.0, WORK_SIDE / min(h, w))
    work = rgb if scale == 1.0 else cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))),
                                               interpolation=cv2.INTER_AREA)
    seg = segment(work)
    if not seg.found:
        return None
    x, y, bw, bh = cv2.boundingRect(seg.hull.view(np.uint8))
    side = max(bw, bh) * (1.0 + 2.0 * CELL_MARGIN)
    if max(bw, bh) < MIN_CELL_SIDE * min(work.shape[:2]):
        return None
    return (x + bw / 2.0) / scale, (y + bh / 2.0) / scale, side / scale


def background_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """The median colour of the image's border pixels (the padding of crops leaving the image)."""
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def square_around(rgb: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """The side x side square centred at (cx, cy), padded with the background colour outside."""
    s = max(1, int(round(side)))
    left, top = int(round(cx - s / 2.0)), int(round(cy - s / 2.0))
    h, w = rgb.shape[:2]
    pad = [max(0, -top), max(0, top + s - h), max(0, -left), max(0, left + s - w)]
    if any(pad):
        rgb = cv2.copyMakeBorder(rgb, *pad, cv2.BORDER_CONSTANT, value=background_colour(rgb))
        top, left = top + pad[0], left + pad[2]
    return rgb[top:top + s, left:left + s]


def crop_with_path(img: Image.Image, size: int, spec: CropSpec = CropSpec()) -> tuple[np.ndarray, str]:
    """uint8 (3, size, size) model input of a PIL image and the crop path it took (`PATHS`).

    The path is the spec's own mode when it worked: `rbc` (centred on the cell, scaled by the red
    cells), `cell` (centred on the cell, the cell at `fraction` of the side) or `centre`. An `rbc`
    crop whose red cells cannot be measured takes the `cell` path, and a `cell` or `rbc` crop whose
    cell is not found the `centre` path: those are the fallbacks every evaluation counts.
    """
    img = img.convert("RGB")
    path = "centre"
    if spec.mode in ("cell", "rbc"):
        rgb = np.asarray(img)
        box = cell_box(rgb)
        if box is not None:
            cx, cy, side = box
            crop_side, path = side / float(spec.fraction), "cell"
            if spec.mode == "rbc":
                diameter = red_cell_diameter(rgb, exclude=box)
                if diameter is not None:
                    crop_side, path = spec.span * diameter, "rbc"
            square = square_around(rgb, cx, cy, crop_side)
            img = Image.fromarray(np.ascontiguousarray(square))
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)), path


def crop_square(img: Image.Image, size: int, spec: CropSpec = CropSpec()) -> tuple[np.ndarray, bool]:
    """uint8 (3, size, size) model input of a PIL image and whether the spec's own crop worked.

    `centre` crops always report True (nothing to find); a `cell` or `rbc` crop that fell back
    (`crop_with_path`) reports False.
    """
    arr, path = crop_with_path(img, size, spec)
    return arr, path == spec.mode


def path_counts(paths: "list[str] | tuple[str, ...]") -> dict[str, int]:
    """{path: count} over `PATHS` (every path listed, zeros included)."""
    return {p: sum(1 for q in paths if q == p) for p in PATHS}


def fallback_rate(counts: dict[str, int], mode: str) -> float:
    """The fraction of inputs whose crop did not take the spec's own `mode` path (0 for `centre`)."""
    total = sum(int(v) for v in counts.values())
    return 0.0 if total == 0 else 1.0 - int(counts.get(mode, 0)) / total
