"""Drawing a blood-smear field: stains, drawing primitives, red cells, platelets and one white cell.

A *scene* (red cells, platelets, one white cell at the origin, smear stain) is drawn in micrometres
from a per-image RNG; it is rasterised as stain densities and turned into colour with Beer-Lambert
absorption over the camera's background light (`render_field`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image

from wbc.data.synthetic.camera import Camera
from wbc.data.synthetic.seeds import item_rng


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


def smear_of(seed: int, source: str, index: int) -> Smear:
    """The stain and light of smear `index` of a source."""
    r = item_rng(seed, source, 9_000_000 + index)
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
    rng = item_rng(scene.seed, scene.source, scene.index)
    smear = smear_of(scene.seed, scene.source, scene.smear)
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
