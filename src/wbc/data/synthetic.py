"""The embedded synthetic dataset: drawn blood-smear crops in the layouts of the real archives.

`generate(out_dir, seed, scale)` writes four zip archives (the `synth_*` sources of
`sources.yaml`) and `synthetic_truth.csv`, so the whole pipeline runs offline:

- `synth_PBC_dataset_normal_DIB.zip`: `PBC_dataset_normal_DIB/<class>/<PREFIX>_<n>.jpg`, the 8 PBC
  folders (5 white-blood-cell classes + erythroblast, ig, platelet), 360x363 JPEG crops.
- `synth_Train.zip`, `synth_TestA.zip`: `<Part>/<Class>/<date>_<n>.jpg`, 575x575 JPEG crops.
- `synth_TestB.zip`: the same layout seen through "another camera and microscope" (other colour
  balance, blur, lower native resolution upscaled, more noise).

How a picture is made: a *scene* (red cells, platelets, one white cell at the origin, smear stain)
is drawn in micrometres from a per-image RNG; it is rasterised as stain densities and turned into
colour with Beer-Lambert absorption over the camera's background light; a *view* (shift, zoom,
focus blur, exposure, sensor noise, JPEG quality) then crops the rendered field. Near-duplicates are
several views of one larger rendered field, so a shift reveals new background.

Ground truth (`synthetic_truth.csv`, one row per archive member, sorted by source, member):
`source, file, member, class_folder, label, true_label, kind, group, detail, sha256`.
`label` is what the class folder says (canonical label or `excluded`), `true_label` what the cell
is (a class name such as `neutrophil` or `platelet`; empty for non-images). `kind`: `original`,
`near_duplicate`, `exact_copy`, `label_conflict`, `broken` (detail `truncated`, `zero` or
`ds_store`), `odd_mode` (detail `mode L|CMYK|P|RGBA|I;16`). `group` (`nd…`, `ec…`, `lc…`) links the
members of a duplicate group: its source image has kind `original`, the others the defect kind.

Deterministic: every image has its own RNG seeded from (seed, source, index), so the bytes do not
depend on worker count or order; zips have sorted members, fixed timestamps and ZIP_STORED.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import os
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import yaml
from PIL import Image, ImageFilter
from tqdm import tqdm

from wbc.core.errors import ConfigError

#: Default seed (the date of the PBC paper).
DEFAULT_SEED = 20200420
#: Fixed timestamp of every zip member.
ZIP_DATE = (2020, 1, 1, 0, 0, 0)
#: Ground-truth file name, written beside the archives.
TRUTH_FILE = "synthetic_truth.csv"
TRUTH_COLUMNS = ("source", "file", "member", "class_folder", "label", "true_label", "kind", "group",
                 "detail", "sha256")
KINDS = ("original", "near_duplicate", "exact_copy", "label_conflict", "broken", "odd_mode")

WBC = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
EXCLUDED = ("erythroblast", "ig", "platelet")


# --------------------------------------------------------------------------------------------
# Layout: sources, cameras, class counts and planted defects
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    """How a source's pictures are taken: crop size, magnification and colour/quality traits."""

    size: tuple[int, int]                  # output (width, height) in px
    px_per_um: float                       # output pixels per micrometre
    native: float                          # native resolution / output resolution (< 1: upscaled)
    background: tuple[float, float, float]  # light through an empty slide (RGB, 0-255)
    stain: float                           # global optical-density multiplier (contrast)
    cast: tuple[float, float, float]       # per-channel optical-density multipliers (colour balance)
    blur: float                            # optical blur (Gaussian radius, output px)
    noise: float                           # sensor noise (sd, 0-255 units)
    quality: int                           # JPEG quality of the originals


PBC_CAMERA = Camera((360, 363), 10.0, 1.0, (255, 231, 204), 1.0, (1.0, 1.0, 1.0), 0.0, 1.2, 88)
RAABIN_CAMERA = Camera((575, 575), 14.5, 0.7, (236, 226, 238), 1.0, (1.0, 1.05, 0.95), 0.0, 1.8, 92)
TESTB_CAMERA = Camera((575, 575), 14.5, 0.4, (240, 236, 206), 0.78, (0.8, 1.15, 0.95), 2.0, 2.0, 84)


@dataclass(frozen=True)
class Layout:
    """One synthetic source: archive layout, camera, class counts and planted defects (at scale 1)."""

    source: str
    top: str                               # top folder inside the zip
    folders: dict[str, str]                # class (true label) -> class folder name
    counts: dict[str, int]                 # class -> number of original single images
    camera: Camera
    smears: int
    naming: str                            # "pbc" or "raabin"
    defects: dict[str, int] = field(default_factory=dict)
    odd_modes: tuple[str, ...] = ()


_PBC_FOLDERS = {c: c for c in WBC + EXCLUDED}
_RAABIN_FOLDERS = {c: c.capitalize() for c in WBC}

LAYOUTS = (
    Layout("synth_pbc", "PBC_dataset_normal_DIB", _PBC_FOLDERS,
           {"neutrophil": 215, "eosinophil": 160, "lymphocyte": 85, "monocyte": 85, "basophil": 55,
            "erythroblast": 50, "ig": 70, "platelet": 50}, PBC_CAMERA, 16, "pbc",
           {"near_dup": 10, "exact_copy": 6, "label_conflict": 2, "truncated": 1, "zero": 1,
            "ds_store": 1}, ("L", "CMYK", "P")),
    Layout("synth_raabin_train", "Train", _RAABIN_FOLDERS,
           {"neutrophil": 345, "lymphocyte": 140, "monocyte": 42, "eosinophil": 42, "basophil": 18},
           RAABIN_CAMERA, 12, "raabin",
           {"near_dup": 8, "cross_dup": 4, "exact_copy": 4, "label_conflict": 1, "truncated": 1,
            "zero": 1}, ("RGBA", "I;16")),
    Layout("synth_raabin_testa", "TestA", _RAABIN_FOLDERS,
           {"neutrophil": 95, "lymphocyte": 40, "monocyte": 12, "eosinophil": 12, "basophil": 6},
           RAABIN_CAMERA, 4, "raabin", {"near_dup": 2, "exact_copy": 1, "truncated": 1}, ()),
    Layout("synth_raabin_testb", "TestB", _RAABIN_FOLDERS,
           {"neutrophil": 95, "lymphocyte": 40, "monocyte": 12, "eosinophil": 12, "basophil": 6},
           TESTB_CAMERA, 4, "raabin", {"near_dup": 2, "exact_copy": 1, "truncated": 1}, ("L",)),
)
_CROSS_TARGET = "synth_raabin_testa"   # cross-source near-duplicates: Train scene re-imaged in TestA


def _registry_files() -> dict[str, str]:
    """Archive file name of each synthetic source, from sources.yaml (the single source of truth)."""
    reg = yaml.safe_load(Path(__file__).with_name("sources.yaml").read_text(encoding="utf-8"))
    files = {sid: s["file"] for sid, s in reg["sources"].items() if s.get("generator") == "synthetic"}
    missing = [lay.source for lay in LAYOUTS if lay.source not in files]
    if missing:
        raise ConfigError(f"sources.yaml lacks the synthetic sources {missing}")
    return files


def _src_code(source: str) -> int:
    """A stable integer for a source id (RNG seeding)."""
    return zlib.crc32(source.encode("utf-8"))


def _rng(seed: int, source: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _src_code(source), *[int(i) for i in index]])


# --------------------------------------------------------------------------------------------
# Stains: optical densities (Beer-Lambert), calibrated as the colour seen over the PBC background
# --------------------------------------------------------------------------------------------

_REF_BG = np.array([255.0, 231.0, 204.0])


def _od(rgb: tuple[float, float, float]) -> np.ndarray:
    """Optical density giving colour `rgb` over the reference (PBC) background at density 1."""
    return np.log(_REF_BG / np.asarray(rgb, dtype=float)).astype(np.float32)


STAINS = {
    "rbc": _od((206, 164, 176)),
    "nucleus": _od((70, 26, 122)),
    "platelet": _od((120, 70, 160)),
    # (cytoplasm, granules) per cell class
    "neutrophil": (_od((226, 200, 214)), _od((185, 140, 185))),
    "eosinophil": (_od((222, 160, 160)), _od((205, 108, 110))),
    "basophil": (_od((176, 136, 200)), _od((60, 22, 96))),
    "monocyte": (_od((176, 168, 212)), _od((160, 140, 200))),
    "lymphocyte": (_od((194, 200, 230)), _od((150, 160, 220))),
    "erythroblast": (_od((128, 112, 186)), _od((110, 90, 170))),
    "ig": (_od((214, 176, 212)), _od((160, 100, 170))),
    "platelet_cls": (_od((230, 210, 220)), _od((120, 70, 160))),
}


# --------------------------------------------------------------------------------------------
# Drawing primitives (all in micrometres on a pixel grid)
# --------------------------------------------------------------------------------------------

class Canvas:
    """Stain-density layers of a rendered field; the white cell sits at the origin (µm)."""

    LAYERS = ("rbc", "nucleus", "cyto", "gran", "platelet")

    def __init__(self, width: int, height: int, px_per_um: float) -> None:
        self.w, self.h, self.s = width, height, px_per_um
        self.d = {k: np.zeros((height, width), np.float32) for k in self.LAYERS}
        self.used: dict[str, tuple[slice, slice] | None] = {k: None for k in self.LAYERS}

    def touch(self, layer: str, sl: tuple[slice, slice]) -> None:
        """Record that `layer` has ink inside `sl` (the union bounding box is kept)."""
        old = self.used[layer]
        if old is not None:
            sl = (slice(min(old[0].start, sl[0].start), max(old[0].stop, sl[0].stop)),
                  slice(min(old[1].start, sl[1].start), max(old[1].stop, sl[1].stop)))
        self.used[layer] = sl

    def patch(self, cx: float, cy: float, r: float):
        """Slices and µm coordinates (relative to (cx, cy)) of the pixels within r of a point."""
        px, py = cx * self.s + self.w / 2, cy * self.s + self.h / 2
        rp = r * self.s + 2
        x0, x1 = max(int(px - rp), 0), min(int(px + rp) + 1, self.w)
        y0, y1 = max(int(py - rp), 0), min(int(py + rp) + 1, self.h)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - self.w / 2) / self.s - cx)
        ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - self.h / 2) / self.s - cy)
        return (slice(y0, y1), slice(x0, x1)), xs[None, :], ys[:, None]


def _soft(signed: np.ndarray, edge: float) -> np.ndarray:
    """Anti-aliased mask from a signed distance (positive inside, µm)."""
    return np.clip(0.5 + signed / edge, 0.0, 1.0)


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth noise (mean ~0, sd ~1) with features about `cell_px` pixels wide."""
    h, w = shape
    gh, gw = max(int(h / cell_px) + 3, 3), max(int(w / cell_px) + 3, 3)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(g, mode="F").resize((int(gw * cell_px), int(gh * cell_px)), Image.Resampling.BICUBIC)
    arr = np.asarray(big, dtype=np.float32)[:h, :w]
    if arr.shape != (h, w):  # tiny patches
        arr = np.pad(arr, ((0, h - arr.shape[0]), (0, w - arr.shape[1])), mode="edge")
    return arr / 0.55


def _ellipse(x, y, cx, cy, a, b, ang, wobble=()) -> np.ndarray:
    """Signed distance (approx., µm) to a rotated ellipse whose radius wobbles with angle."""
    c, s = math.cos(ang), math.sin(ang)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    if wobble:
        phi = np.arctan2(v / b, u / a)
        q = q / (1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in wobble))
    return (1.0 - q) * min(a, b)


def _polyline(x, y, pts: np.ndarray, width: float) -> np.ndarray:
    """Signed distance (µm) to a thick polyline (a chain of capsules)."""
    best = None
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        d = np.hypot(x - ax - t * dx, y - ay - t * dy)
        best = d if best is None else np.minimum(best, d)
    return width - best


def _wobble(rng: np.random.Generator, amp: float, ks=(2, 3, 4, 5)) -> tuple:
    return tuple((k, amp * rng.uniform(0.2, 1.0) / (1 + 0.3 * (k - 2)), rng.uniform(0, 2 * math.pi)) for k in ks)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------

@dataclass
class Smear:
    """Per-smear stain and illumination variation (shared by all cells of one slide)."""

    light: np.ndarray       # background multiplier per channel
    nucleus: float
    eosin: float
    azure: float
    rbc_cover: float
    rbc_radius: float
    pallor: float
    crenated: float
    tag: str                # used in Raabin-style file names


def _smear(seed: int, source: str, index: int) -> Smear:
    r = _rng(seed, source, 9_000_000 + index)
    month, day = int(r.integers(1, 13)), int(r.integers(1, 29))
    return Smear(light=np.clip(1 + r.normal(0, 0.012, 3), 0.95, 1.04), nucleus=r.uniform(0.85, 1.15),
                 eosin=r.uniform(0.85, 1.2), azure=r.uniform(0.85, 1.15), rbc_cover=r.uniform(0.3, 0.55),
                 rbc_radius=r.uniform(3.5, 3.9), pallor=r.uniform(0.6, 0.85), crenated=r.uniform(0, 0.1) ** 1.5 * 3,
                 tag=f"2019{month:02d}{day:02d}")


def _place_rbcs(rng: np.random.Generator, smear: Smear, half: float, keep_out: float) -> list[tuple]:
    """Red cells scattered over [-half, half]^2 (µm), mostly not overlapping, away from the centre."""
    target = int(smear.rbc_cover * (2 * half) ** 2 / (math.pi * smear.rbc_radius ** 2))
    cells: list[tuple] = []
    pos = np.empty((0, 2))
    rad = np.empty(0)
    for _ in range(target * 6):
        if len(cells) >= target:
            break
        r = smear.rbc_radius * rng.uniform(0.88, 1.12)
        p = rng.uniform(-half, half, 2)
        if np.hypot(*p) < keep_out + r * rng.uniform(0.55, 0.95):
            continue
        if len(rad) and np.any(np.hypot(*(pos - p).T) < (rad + r) * rng.choice([0.95, 0.8], p=[0.85, 0.15])):
            continue
        aspect = rng.uniform(0.86, 1.0)
        cells.append((p[0], p[1], r, aspect, rng.uniform(0, math.pi),
                      min(smear.pallor * rng.uniform(0.8, 1.2), 0.9), rng.random() < smear.crenated))
        pos, rad = np.vstack([pos, p]), np.append(rad, r)
    return cells


def _draw_rbcs(cv: Canvas, cells: list[tuple]) -> None:
    for cx, cy, r, aspect, ang, pallor, crenated in cells:
        got = cv.patch(cx, cy, r * 1.1)
        if got is None:
            continue
        sl, x, y = got
        wob = ((12, 0.05, ang * 3),) if crenated else ()
        sd = _ellipse(x, y, 0.0, 0.0, r, r * aspect, ang, wob)
        m = _soft(sd, 0.25)
        q = np.clip(1.0 - sd / min(r, r * aspect), 0.0, 1.0)     # 0 at the centre .. 1 at the rim
        dens = m * (1.0 - pallor * np.exp(-((q / 0.6) ** 4)) + 0.15 * np.exp(-((q - 0.8) / 0.15) ** 2))
        np.maximum(cv.d["rbc"][sl], dens, out=cv.d["rbc"][sl])   # overlaps: the darker one wins


def _draw_platelets(cv: Canvas, rng: np.random.Generator, centres: Iterable[tuple], scale: float = 1.0) -> None:
    for cx, cy, r in centres:
        got = cv.patch(cx, cy, r * 1.5)
        if got is None:
            continue
        sl, x, y = got
        m = _soft(_ellipse(x, y, 0, 0, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, 3.2), _wobble(rng, 0.12)), 0.3)
        tex = np.clip(0.6 + 0.5 * _noise(rng, m.shape, max(0.35 * cv.s, 1.5)), 0.1, 1.4)
        np.maximum(cv.d["platelet"][sl], m * tex * scale, out=cv.d["platelet"][sl])
        cv.touch("platelet", sl)


# -- white cells ----------------------------------------------------------------------------

def _lobes(rng, radius: float, n: int, rho: float, span: float, size: tuple[float, float]):
    """Centres and sizes of n nuclear lobes on an arc (µm)."""
    a0 = rng.uniform(0, 2 * math.pi)
    angs = a0 + (np.linspace(0, span, n) if n > 1 else np.zeros(1))
    off = rng.normal(0, 0.08 * radius, 2)
    return [(rho * math.cos(t) + off[0], rho * math.sin(t) + off[1], radius * rng.uniform(*size), t) for t in angs]


def _nucleus_lobed(x, y, rng, R: float, n: int, rho: float, span: float, size, fil: float) -> np.ndarray:
    lobes = _lobes(rng, R, n, rho, span, size)
    sd = None
    for cx, cy, a, t in lobes:
        e = _ellipse(x, y, cx, cy, a, a * rng.uniform(0.62, 0.9), t + math.pi / 2 + rng.normal(0, 0.3),
                     _wobble(rng, 0.08))
        sd = e if sd is None else np.maximum(sd, e)
    if n > 1:
        pts = np.array([(cx, cy) for cx, cy, _, _ in lobes])
        sd = np.maximum(sd, _polyline(x, y, pts, fil * R))
    return sd


def _nucleus_band(x, y, rng, R: float) -> np.ndarray:
    rho, span = R * rng.uniform(0.3, 0.45), rng.uniform(2.8, 4.6)
    a0 = rng.uniform(0, 2 * math.pi)
    t = a0 + np.linspace(0, span, 11)
    squash = rng.uniform(0.75, 1.0)
    pts = np.stack([rho * np.cos(t), rho * squash * np.sin(t)], 1)
    return _polyline(x, y, pts, R * rng.uniform(0.17, 0.24))


def _nucleus_kidney(x, y, rng, R: float, depth: tuple[float, float]) -> np.ndarray:
    a = R * rng.uniform(0.6, 0.76)
    b = a * rng.uniform(0.74, 0.92)
    ang = rng.uniform(0, 2 * math.pi)
    off = R * rng.uniform(0.05, 0.2)
    cx, cy = off * math.cos(ang + math.pi), off * math.sin(ang + math.pi)
    outer = _ellipse(x, y, cx, cy, a, b, ang, _wobble(rng, 0.06))
    k = rng.uniform(*depth)          # notch depth: kidney (small) .. horseshoe (large)
    nx, ny = cx - b * (1.25 - k) * math.sin(ang), cy + b * (1.25 - k) * math.cos(ang)
    notch = _ellipse(x, y, nx, ny, a * rng.uniform(0.45, 0.7), b * rng.uniform(0.5, 0.75), ang)
    return np.minimum(outer, -notch)


def _nucleus_round(x, y, rng, R: float, frac: tuple[float, float]) -> np.ndarray:
    rn = R * rng.uniform(*frac)
    ang = rng.uniform(0, 2 * math.pi)
    off = (R - rn) * rng.uniform(0.0, 0.8)
    return _ellipse(x, y, off * math.cos(ang), off * math.sin(ang), rn, rn * rng.uniform(0.88, 1.0),
                    rng.uniform(0, 3.2), _wobble(rng, 0.05))


#: class -> (radius range in µm, nucleus density, chromatin texture amplitude)
CELL = {
    "neutrophil": ((6.3, 8.5), 1.1, 0.3),
    "eosinophil": ((6.3, 8.5), 1.0, 0.3),
    "basophil": ((5.2, 7.2), 1.05, 0.25),
    "monocyte": ((7.2, 10.0), 0.78, 0.35),
    "lymphocyte": ((4.0, 7.5), 1.25, 0.15),
    "erythroblast": ((4.5, 6.5), 1.3, 0.2),
    "ig": ((6.5, 9.0), 0.85, 0.3),
}


def _cell_radius(rng, label: str) -> float:
    lo, hi = CELL[label][0]
    if label == "lymphocyte":           # mostly small lymphocytes, some large ones
        return rng.uniform(4.2, 6.0) if rng.random() < 0.8 else rng.uniform(6.0, 7.5)
    return rng.uniform(lo, hi)


def _draw_wbc(cv: Canvas, rng: np.random.Generator, label: str, variant: str, smear: Smear) -> float:
    """Draw the white cell at the origin; return its radius (µm)."""
    R = _cell_radius(rng, label)
    got = cv.patch(0.0, 0.0, R * 1.25)
    sl, x, y = got
    wob = _wobble(rng, 0.07 if label == "monocyte" else 0.035)
    cell = _soft(_ellipse(x, y, 0, 0, R, R * rng.uniform(0.9, 1.0), rng.uniform(0, 3.2), wob), 0.35)
    if label == "neutrophil":
        if variant == "band":
            nsd = _nucleus_band(x, y, rng, R)
        else:
            n = int(rng.choice([2, 3, 4, 5], p=[0.25, 0.45, 0.22, 0.08]))
            nsd = _nucleus_lobed(x, y, rng, R, n, R * rng.uniform(0.3, 0.42), rng.uniform(1.6, 1.0 + 0.75 * n),
                                 (0.32, 0.4), rng.uniform(0.06, 0.09))
    elif label == "eosinophil":
        n = 2 if rng.random() < 0.85 else 3
        nsd = _nucleus_lobed(x, y, rng, R, n, R * rng.uniform(0.32, 0.42), rng.uniform(1.3, 2.0), (0.36, 0.44), 0.07)
    elif label == "basophil":
        nsd = _nucleus_lobed(x, y, rng, R, int(rng.integers(1, 4)), R * 0.25, rng.uniform(1.0, 2.5), (0.3, 0.42), 0.1)
    elif label == "monocyte":
        nsd = _nucleus_kidney(x, y, rng, R, (0.2, 0.75))
    elif label == "lymphocyte":
        nsd = _nucleus_round(x, y, rng, R, (0.8, 0.92) if R < 6.0 else (0.7, 0.82))
    elif label == "erythroblast":
        nsd = _nucleus_round(x, y, rng, R, (0.55, 0.7))
    else:  # ig
        nsd = _nucleus_kidney(x, y, rng, R, (0.0, 0.3 if variant != "metamyelocyte" else 0.55))
    nuc = _soft(nsd, 0.3) * cell
    _, ndens, chroma = CELL[label]
    tex = _noise(rng, nuc.shape, max(0.55 * cv.s, 1.5))
    cv.d["nucleus"][sl] = nuc * np.clip(ndens * (0.9 + chroma * tex), 0.2, 1.6)
    cyto_area = cell * (1.0 - nuc)
    glass = 1.0 + 0.15 * _noise(rng, cell.shape, max(0.4 * cv.s, 1.5))
    cyto = cyto_area * glass
    if label == "monocyte" and rng.random() < 0.5:
        cyto *= 1.0 - 0.85 * _vacuoles(x, y, rng, R, int(rng.integers(1, 7)))
    cv.d["cyto"][sl] = cyto
    cv.d["gran"][sl] = _granules(rng, label, cv.s, x, y, cell, nuc, cyto_area)
    cv.d["rbc"][sl] *= 1.0 - cell
    for layer in ("nucleus", "cyto", "gran"):
        cv.touch(layer, sl)
    return R


def _vacuoles(x, y, rng, R: float, n: int) -> np.ndarray:
    out = np.zeros(np.broadcast(x, y).shape, np.float32)
    for _ in range(n):
        t, rr = rng.uniform(0, 2 * math.pi), R * rng.uniform(0.6, 0.9)
        out = np.maximum(out, _soft(_ellipse(x, y, rr * math.cos(t), rr * math.sin(t), rng.uniform(0.35, 0.8),
                                             rng.uniform(0.3, 0.7), t), 0.2))
    return out


#: class -> (granule spacing µm, granule radius µm, fill probability, density, fraction over the nucleus)
GRANULES = {
    "neutrophil": (0.42, 0.13, 0.6, 0.45, 0.0),
    "eosinophil": (0.68, 0.3, 1.0, 0.85, 0.1),
    "basophil": (0.8, 0.38, 1.0, 1.0, 0.9),
    "monocyte": (0.45, 0.12, 0.3, 0.3, 0.0),
    "lymphocyte": (0.5, 0.12, 0.1, 0.3, 0.0),
    "erythroblast": (0.5, 0.1, 0.0, 0.0, 0.0),
    "ig": (0.6, 0.2, 0.6, 0.7, 0.0),
}


def _dots(rng, x, y, spacing: float, radius: float, fill: float, edge: float) -> np.ndarray:
    """Round granules: two randomly rotated, jittered lattices (one granule per lattice cell)."""
    out = None
    for _ in range(2):
        t = rng.uniform(0, math.pi / 2)
        u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
        d = _lattice(rng, u, v, spacing * 1.3, radius, fill * 0.75, edge)
        out = d if out is None else np.maximum(out, d)
    return out


def _lattice(rng, x, y, spacing: float, radius: float, fill: float, edge: float) -> np.ndarray:
    gx, gy = np.floor(x / spacing), np.floor(y / spacing)
    ix, iy = (gx - gx.min()).astype(np.intp), (gy - gy.min()).astype(np.intp)
    nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
    slack = 0.3 * spacing
    jx, jy = rng.uniform(-slack, slack, (2, ny, nx)).astype(np.float32)
    rad = (radius * rng.uniform(0.75, 1.25, (ny, nx)) * (rng.random((ny, nx)) < fill)).astype(np.float32)
    cx = (gx + 0.5) * spacing + jx[iy, ix]
    cy = (gy + 0.5) * spacing + jy[iy, ix]
    return _soft(rad[iy, ix] - np.hypot(x - cx, y - cy), edge)


def _granules(rng, label: str, s: float, x, y, cell, nuc, cyto_area) -> np.ndarray:
    spacing, radius, fill, dens, over = GRANULES[label]
    if dens == 0 or fill == 0:
        return np.zeros_like(cell)
    xb, yb = np.broadcast_arrays(x, y)
    gran = _dots(rng, xb, yb, spacing, radius, min(fill * rng.uniform(0.8, 1.15), 1.0), max(1.2 / s, 0.08))
    return gran * dens * (cyto_area + over * nuc)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """What one picture (or a near-duplicate group) shows; everything derives from its RNG."""

    seed: int
    source: str
    index: int
    label: str
    variant: str
    smear: int


def render_field(scene: Scene, cam: Camera, factor: float = 1.0) -> Image.Image:
    """Rasterise a scene at the camera's native resolution, `factor` times the crop size."""
    rng = _rng(scene.seed, scene.source, scene.index)
    smear = _smear(scene.seed, scene.source, scene.smear)
    s = cam.px_per_um * cam.native
    w, h = int(math.ceil(cam.size[0] * cam.native * factor)), int(math.ceil(cam.size[1] * cam.native * factor))
    cv = Canvas(w, h, s)
    half = max(w, h) / s / 2 + 4
    keep = 0.0 if scene.label == "platelet" else CELL[scene.label][0][1]
    _draw_rbcs(cv, _place_rbcs(rng, smear, half, keep * 0.9))
    if scene.label == "platelet":
        k = int(rng.integers(1, 5))
        _draw_platelets(cv, rng, [(rng.normal(0, 1.5), rng.normal(0, 1.5), rng.uniform(0.9, 1.9)) for _ in range(k)])
        cyto, gran = STAINS["platelet_cls"]
    else:
        R = _draw_wbc(cv, rng, scene.label, scene.variant, smear)
        cyto, gran = STAINS[scene.label]
        stray = []
        for _ in range(int(rng.poisson(1.2))):
            p = rng.uniform(-half, half, 2)
            if np.hypot(*p) > R + 2:
                stray.append((p[0], p[1], rng.uniform(0.5, 1.1)))
        _draw_platelets(cv, rng, stray)
    ods = {"rbc": STAINS["rbc"] * smear.eosin, "nucleus": STAINS["nucleus"] * smear.nucleus,
           "cyto": cyto * smear.azure, "gran": gran * (smear.eosin if scene.label == "eosinophil" else smear.nucleus),
           "platelet": STAINS["platelet"] * smear.nucleus}
    vecs = {k: (vec * np.asarray(cam.cast) * cam.stain).astype(np.float32) for k, vec in ods.items()}
    od = cv.d["rbc"][:, :, None] * vecs["rbc"]
    od += 0.008 * _noise(rng, (h, w), 80 * cam.native)[:, :, None]  # uneven smear thickness
    for k in ("platelet", "nucleus", "cyto", "gran"):
        if cv.used[k] is not None:
            sl = cv.used[k]
            od[sl] += cv.d[k][sl][:, :, None] * vecs[k]
    light = (np.asarray(cam.background) * smear.light).astype(np.float32)
    rgb = light * np.exp(-od)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True)
class View:
    """How one picture of a field is taken (near-duplicates differ in these)."""

    dx: float = 0.0          # shift, fraction of the crop width
    dy: float = 0.0
    zoom: float = 1.0
    blur: float = 0.0        # extra focus blur (output px)
    exposure: float = 1.0
    quality: int | None = None   # JPEG quality; None = the camera's

    def describe(self) -> str:
        return (f"shift=({self.dx:+.3f},{self.dy:+.3f}) zoom={self.zoom:.3f} blur={self.blur:.2f} "
                f"exposure={self.exposure:.3f} quality={self.quality}")


@functools.lru_cache(maxsize=8)
def _noise_tile(seed: int, width: int, height: int) -> np.ndarray:
    """Sensor-noise tile (2x the crop, sd 1), shared by the pictures of one camera size."""
    rng = np.random.default_rng([int(seed), 5_000_000, width, height])
    return rng.standard_normal((2 * height, 2 * width, 3), dtype=np.float32)


def take_view(field_img: Image.Image, cam: Camera, view: View, rng: np.random.Generator, seed: int = 0) -> Image.Image:
    """Crop/zoom a rendered field to the camera's output size, then blur, expose and add noise."""
    W, H = cam.size
    k = cam.native / view.zoom
    cx = field_img.width / 2 + view.dx * W * cam.native
    cy = field_img.height / 2 + view.dy * H * cam.native
    box = (cx - k * W / 2, cy - k * H / 2, cx + k * W / 2, cy + k * H / 2)
    if cam.blur > 0:   # optical blur of the camera, at its native resolution
        field_img = field_img.filter(ImageFilter.GaussianBlur(cam.blur * cam.native))
    if box == (0, 0, W, H) and field_img.size == (W, H):
        img = field_img
    else:
        img = field_img.resize((W, H), Image.Resampling.BICUBIC, box=box)
    if view.blur > 0:  # focus blur of this picture
        img = img.filter(ImageFilter.GaussianBlur(view.blur))
    arr = np.asarray(img, dtype=np.float32)
    if view.exposure != 1.0:
        arr = arr * view.exposure
    oy, ox = int(rng.integers(H)), int(rng.integers(W))
    arr = arr + _noise_tile(seed, W, H)[oy:oy + H, ox:ox + W] * cam.noise
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, mode: str = "RGB", quality: int = 90) -> bytes:
    """Encode a picture as JPEG (RGB, L, CMYK) or PNG (P, RGBA, I;16)."""
    buf = io.BytesIO()
    if mode in ("RGB", "L", "CMYK"):
        img.convert(mode).save(buf, format="JPEG", quality=quality)
    elif mode == "P":
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG")
    elif mode == "RGBA":
        rgba = img.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(buf, format="PNG")
    elif mode == "I;16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey.astype("<u2")).save(buf, format="PNG")
    else:
        raise ConfigError(f"unsupported synthetic image mode {mode!r}")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Plan: which pictures, which defects, which names
# --------------------------------------------------------------------------------------------

@dataclass
class Shot:
    """One archive member produced from a rendered scene."""

    source: str
    label: str                # class folder's class (true label of the cell)
    kind: str
    view: View
    mode: str = "RGB"
    group: str = ""
    detail: str = ""
    member: str = ""          # filled by naming


@dataclass
class Task:
    """One scene to render and the shots taken of it (several for a near-duplicate group)."""

    scene: Scene
    camera: Camera
    shots: list[Shot]
    factor: float = 1.0


def _scaled(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(round(n * scale))) if n > 0 else 0


def _variant(rng: np.random.Generator, label: str) -> str:
    """Sub-type drawn for a cell: band/segmented neutrophil, kind of immature granulocyte."""
    if label == "neutrophil":
        return "band" if rng.random() < 0.45 else "segmented"
    if label == "ig":
        return str(rng.choice(["ig", "myelocyte", "metamyelocyte", "promyelocyte"], p=[0.4, 0.25, 0.25, 0.1]))
    return ""


def _pick_label(rng, counts: dict[str, int]) -> str:
    labels = [c for c in WBC if counts.get(c)]
    p = np.array([counts[c] for c in labels], float)
    return str(rng.choice(labels, p=p / p.sum()))


def _near_views(rng: np.random.Generator, n: int) -> list[View]:
    """The group source (plain view) and n-1 re-images: half of them slightly moved (shift <= 3 %,
    zoom +-3 %), the others up to the limits (shift 12 % of the crop, zoom +-10 %)."""
    views = [View()]
    for _ in range(n - 1):
        big = rng.random() < 0.5
        shift, zoom = (0.12, 0.1) if big else (0.03, 0.03)
        views.append(View(dx=rng.uniform(-shift, shift), dy=rng.uniform(-shift, shift),
                          zoom=rng.uniform(1 - zoom, 1 + zoom), blur=rng.uniform(0.0, 1.5),
                          exposure=rng.uniform(0.9, 1.1), quality=int(rng.integers(70, 96))))
    return views


def plan(seed: int = DEFAULT_SEED, scale: float = 1.0) -> tuple[list[Task], list[dict]]:
    """Render tasks and byte-level derived members (copies, broken files) of the whole dataset."""
    if not scale > 0:
        raise ConfigError(f"synthetic scale must be > 0, got {scale}")
    tasks: list[Task] = []
    derived: list[dict] = []    # {"source", "label", "kind", "of": (task_idx, shot_idx) | None, "detail", "group"}
    gid = {"nd": 0, "ec": 0, "lc": 0}

    def new_group(prefix: str) -> str:
        gid[prefix] += 1
        return f"{prefix}{gid[prefix]:04d}"

    for lay in LAYOUTS:
        rng = _rng(seed, lay.source, 8_000_000)
        counts = {c: _scaled(n, scale) for c, n in lay.counts.items()}
        index = 0

        def scene(label: str) -> Scene:
            nonlocal index
            index += 1
            return Scene(seed, lay.source, index, label, _variant(rng, label), int(rng.integers(lay.smears)))

        singles: list[int] = []
        for label in sorted(counts):
            for _ in range(counts[label]):
                tasks.append(Task(scene(label), lay.camera, [Shot(lay.source, label, "original", View())]))
                if label in WBC:
                    singles.append(len(tasks) - 1)
        d = {k: _scaled(n, scale) for k, n in lay.defects.items()}
        for kind, target in (("near_dup", None), ("cross_dup", _CROSS_TARGET)):
            for _ in range(d.get(kind, 0)):
                label, g = _pick_label(rng, lay.counts), new_group("nd")
                views = _near_views(rng, int(rng.integers(2, 4)))
                shots = [Shot(lay.source, label, "original", views[0], group=g, detail="group source")]
                for j, v in enumerate(views[1:]):
                    src = target if (target and j == 0) else lay.source
                    shots.append(Shot(src, label, "near_duplicate", v, group=g, detail=v.describe()))
                tasks.append(Task(scene(label), lay.camera, shots, factor=1.4))
        for mode in lay.odd_modes:
            label = _pick_label(rng, lay.counts)
            tasks.append(Task(scene(label), lay.camera, [Shot(lay.source, label, "odd_mode", View(), mode=mode,
                                                               detail=f"mode {mode}")]))
        picks = rng.permutation(singles)
        n_ec, n_lc = d.get("exact_copy", 0), d.get("label_conflict", 0)
        for t in picks[:n_ec]:
            g = new_group("ec")
            tasks[t].shots[0].group = g
            derived.append({"source": lay.source, "label": tasks[t].scene.label, "kind": "exact_copy",
                            "of": (int(t), 0), "group": g, "detail": "byte-identical copy"})
        for t in picks[n_ec:n_ec + n_lc]:
            g, true = new_group("lc"), tasks[t].scene.label
            other = str(rng.choice([c for c in WBC if c != true and lay.counts.get(c)]))
            tasks[t].shots[0].group = g
            derived.append({"source": lay.source, "label": other, "kind": "label_conflict", "of": (int(t), 0),
                            "group": g, "detail": f"byte-identical copy filed as {other}", "true_label": true})
        for kind in ("truncated", "zero", "ds_store"):
            for _ in range(d.get(kind, 0)):
                label = "neutrophil" if kind == "ds_store" else _pick_label(rng, lay.counts)
                of = None
                if kind == "truncated":   # a render that only exists cut short ("_hidden" shot)
                    tasks.append(Task(scene(label), lay.camera, [Shot(lay.source, label, "_hidden", View())]))
                    of = (len(tasks) - 1, 0)
                derived.append({"source": lay.source, "label": label, "kind": "broken", "of": of, "group": "",
                                "detail": kind, "broken": kind})
    return tasks, derived


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_PBC_PREFIX = {"basophil": "BA", "eosinophil": "EO", "lymphocyte": "LY", "monocyte": "MO",
               "erythroblast": "ERB", "platelet": "PLATELET"}
_IG_PREFIX = {"ig": "IG", "myelocyte": "MY", "metamyelocyte": "MMY", "promyelocyte": "PMY"}


class Namer:
    """Unique, realistic file names per source (numbers drawn without replacement)."""

    def __init__(self, seed: int, layout: Layout, n: int) -> None:
        self.layout = layout
        rng = _rng(seed, layout.source, 7_000_000)
        self.numbers = iter(rng.choice(np.arange(1, 1_000_000), size=n, replace=False).tolist())
        self.rng = rng

    def name(self, label: str, variant: str = "", smear_tag: str = "", kind: str = "", ext: str = "jpg") -> str:
        lay, num = self.layout, next(self.numbers)
        folder = lay.folders[label]
        if kind == "ds_store":
            return f"{lay.top}/{folder}/.DS_{num}.jpg"
        if lay.naming == "pbc":
            if label == "neutrophil":
                prefix = {"band": "BNE", "segmented": "SNE"}.get(variant, "SNE")
                if self.rng.random() < 0.02:
                    prefix = "NEUTROPHIL"
            elif label == "ig":
                prefix = _IG_PREFIX.get(variant, "IG")
            else:
                prefix = _PBC_PREFIX[label]
            return f"{lay.top}/{folder}/{prefix}_{num}.{ext}"
        return f"{lay.top}/{folder}/{smear_tag or '20190101'}_{num:06d}.{ext}"


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

def _render_task(task: Task) -> list[bytes]:
    """Render one scene and encode each of its shots (runs in worker processes)."""
    field_img = render_field(task.scene, task.camera, task.factor)
    out = []
    for j, shot in enumerate(task.shots):
        rng = _rng(task.scene.seed, task.scene.source, task.scene.index, 1 + j)
        img = take_view(field_img, task.camera, shot.view, rng, task.scene.seed)
        out.append(encode(img, shot.mode, shot.view.quality or task.camera.quality))
    return out


def _run_tasks(tasks: list[Task], workers: int) -> list[list[bytes]]:
    bar = dict(total=len(tasks), desc="synthetic images", unit="scene", disable=None)
    if workers <= 1:
        return [_render_task(t) for t in tqdm(tasks, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_render_task, tasks, chunksize=8), **bar))


def _broken_bytes(kind: str, data: bytes | None, rng: np.random.Generator) -> bytes:
    if kind == "zero":
        return b""
    if kind == "ds_store":  # like a macOS .DS_Store: "Bud1" header, 6,148 bytes
        body = rng.integers(0, 256, 6148 - 8, dtype=np.uint8).tobytes()
        return b"\x00\x00\x00\x01Bud1" + body
    assert data is not None
    return data[: int(len(data) * rng.uniform(0.35, 0.7))]


def build(seed: int = DEFAULT_SEED, scale: float = 1.0,
          workers: int = 0) -> tuple[dict[str, dict[str, bytes]], list[dict]]:
    """Render the dataset in memory: {source: {member: bytes}} and the ground-truth rows."""
    tasks, derived = plan(seed, scale)
    layouts = {lay.source: lay for lay in LAYOUTS}
    n_names = {s: sum(sh.source == s for t in tasks for sh in t.shots) + sum(d["source"] == s for d in derived)
               for s in layouts}
    namers = {s: Namer(seed, lay, n_names[s]) for s, lay in layouts.items()}
    workers = workers or (os.cpu_count() or 1)
    encoded = _run_tasks(tasks, workers)
    files: dict[str, dict[str, bytes]] = {s: {} for s in layouts}
    rows: list[dict] = []

    def add(source: str, member: str, data: bytes, label: str, kind: str, group: str, detail: str,
            true_label: str) -> None:
        lay = layouts[source]
        files[source][member] = data
        rows.append({"source": source, "member": member, "class_folder": lay.folders[label],
                     "label": label if label in WBC else "excluded", "true_label": true_label, "kind": kind,
                     "group": group, "detail": detail, "sha256": hashlib.sha256(data).hexdigest()})

    names: dict[tuple[int, int], tuple[str, str]] = {}
    for ti, (task, blobs) in enumerate(zip(tasks, encoded)):
        for si, (shot, data) in enumerate(zip(task.shots, blobs)):
            smear = _smear(seed, task.scene.source, task.scene.smear)
            ext = "png" if shot.mode in ("P", "RGBA", "I;16") else "jpg"
            member = namers[shot.source].name(shot.label, task.scene.variant, smear.tag, ext=ext)
            names[(ti, si)] = (shot.source, member)
            if shot.kind != "_hidden":
                add(shot.source, member, data, shot.label, shot.kind, shot.group, shot.detail, task.scene.label)
    for k, d in enumerate(derived):
        of = d["of"]
        data = encoded[of[0]][of[1]] if of else None
        if d["kind"] == "broken":
            data = _broken_bytes(d["broken"], data, _rng(seed, d["source"], 6_000_000 + k))
        smear = tasks[of[0]].scene.smear if of else k % layouts[d["source"]].smears
        member = namers[d["source"]].name(d["label"], "", _smear(seed, d["source"], smear).tag, kind=d["detail"])
        detail = d["detail"] if not of or d["kind"] == "broken" else f"{d['detail']} of {names[of][1]}"
        true_label = "" if d.get("broken") in ("zero", "ds_store") else d.get("true_label", d["label"])
        add(d["source"], member, data, d["label"], d["kind"], d["group"], detail, true_label)
    return files, rows


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """Write a deterministic zip: sorted members, fixed timestamps, stored (no recompression)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, members[name])
    os.replace(tmp, path)
    return path


def write_truth(path: Path, rows: list[dict]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in sorted(rows, key=lambda r: (r["source"], r["member"])):
            w.writerow(row)
    os.replace(tmp, path)
    return path


def generate(out_dir: str | Path, seed: int = DEFAULT_SEED, scale: float = 1.0, workers: int = 0) -> list[Path]:
    """Write the four synthetic archives and `synthetic_truth.csv` into out_dir; return their paths.

    `scale` multiplies every image count (each planted defect kind keeps at least one instance);
    `workers` = processes for rendering (0 = all cores); the bytes do not depend on it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file_names = _registry_files()
    files, rows = build(int(seed), float(scale), int(workers))
    for row in rows:
        row["file"] = file_names[row["source"]]
    paths = [write_zip(out / file_names[lay.source], files[lay.source]) for lay in LAYOUTS]
    paths.append(write_truth(out / TRUTH_FILE, rows))
    return paths


def read_truth(path: str | Path) -> list[dict]:
    """Read synthetic_truth.csv back (all values as strings)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def iter_members(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every member of a synthetic zip, in archive order."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            yield info.filename, zf.read(info)

