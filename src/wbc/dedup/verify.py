"""Verification of a candidate pair: band-limited phase correlation over a small zoom search aligns
the two thumbnails, then normalised cross-correlation of the centre (the white cell) and of its
surroundings; `parallel_verify` spreads the pairs over forked processes."""
from __future__ import annotations

import functools
import multiprocessing as mp
from dataclasses import dataclass

import numpy as np
import scipy.fft
from tqdm import tqdm

from wbc.core.parallel import n_workers
from wbc.dedup.fingerprints import ZOOMS, _hann

#: Frequency band (radius in bins at THUMB, (low, high]) of the phase correlation: without the lowest
#: frequencies (the centred cell blob, shared by distinct cells) and the highest (blur, JPEG).
BAND = (6, 28)
#: scipy.fft threads of the verification (1 inside forked verification workers)
_FFT_WORKERS = -1


@dataclass(frozen=True)
class _Geometry:
    """Constants of the verification at thumbnail side t."""

    t: int
    hann: np.ndarray    # (t, t) float32
    band: np.ndarray    # (t, t // 2 + 1) float32 0/1: the phase-correlation band
    grid: np.ndarray    # (t,) float32 pixel coordinates minus the centre


@functools.lru_cache(maxsize=4)
def _geometry(t: int) -> _Geometry:
    ky = np.fft.fftfreq(t) * t   # cycles per image side, the same at any t
    kx = np.fft.rfftfreq(t) * t
    r = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    band = ((r <= BAND[1]) & (r > BAND[0])).astype(np.float32)
    return _Geometry(t, _hann(t), band, np.arange(t, dtype=np.float32) - (t - 1) / 2.0)


def spectra(thumbs: np.ndarray, block: int = 1024) -> np.ndarray:
    """Unit-magnitude, band-limited spectra of the windowed thumbnails:
    complex64 (N, len(ZOOMS), t, t//2+1) for thumbnails of side t."""
    g = _geometry(thumbs.shape[-1])
    out = np.empty((*thumbs.shape[:2], g.t, g.t // 2 + 1), np.complex64)
    for start in range(0, len(thumbs), block):
        x = thumbs[start:start + block].astype(np.float32)
        x = (x - x.mean(axis=(-1, -2), keepdims=True)) * g.hann
        f = scipy.fft.rfft2(x, workers=-1)
        out[start:start + block] = f / (np.abs(f) + 1e-6) * g.band
    return out


_COMBOS = [(0, z) for z in range(len(ZOOMS))] + [(z, 0) for z in range(1, len(ZOOMS))]


def _masked_ncc(a: np.ndarray, b: np.ndarray, w: np.ndarray, min_frac: float = 0.08) -> np.ndarray:
    """Normalised cross-correlation of image stacks a, b (n, t, t) over the 0/1 weights w; 0 when the
    masked area is below `min_frac` of the thumbnail."""
    nw = w.sum((1, 2)) + 1e-6
    a0 = (a - ((a * w).sum((1, 2)) / nw)[:, None, None]) * w
    b0 = (b - ((b * w).sum((1, 2)) / nw)[:, None, None]) * w
    ncc = (a0 * b0).sum((1, 2)) / np.sqrt((a0 ** 2).sum((1, 2)) * (b0 ** 2).sum((1, 2)) + 1e-6)
    return np.where(nw < min_frac * a.shape[1] * a.shape[2], 0.0, ncc)


def _best_alignment(spec_a: np.ndarray, spec_b: np.ndarray, bi: np.ndarray, bj: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair (spec_a[bi], spec_b[bj]), the zoom combination (_COMBOS index) and translation (dy, dx)
    in [-t/2, t/2) with a(x) ~ b(x - d) maximising the band-limited phase-correlation peak."""
    n, t = len(bi), spec_a.shape[2]
    a0, b0 = spec_a[bi, 0], np.conj(spec_b[bj, 0])
    cross = np.empty((len(_COMBOS), n, *a0.shape[1:]), np.complex64)
    for c, (a_z, b_z) in enumerate(_COMBOS):
        a = a0 if a_z == 0 else spec_a[bi, a_z]
        b = b0 if b_z == 0 else np.conj(spec_b[bj, b_z])
        np.multiply(a, b, out=cross[c])
    r = scipy.fft.irfft2(cross, s=(t, t), workers=_FFT_WORKERS).reshape(len(_COMBOS), n, t * t)
    pk = r.argmax(axis=2)                                   # (combos, n)
    val = np.take_along_axis(r, pk[..., None], axis=2)[..., 0]
    combo = val.argmax(axis=0)                              # first combo wins ties, as a stable rule
    pos = pk[combo, np.arange(n)]
    dy, dx = pos // t, pos % t
    return combo, np.where(dy >= t // 2, dy - t, dy), np.where(dx >= t // 2, dx - t, dx)


def verify_pairs(spec_a: np.ndarray, thumbs_a: np.ndarray, i: np.ndarray, j: np.ndarray,
                 spec_b: np.ndarray | None = None, thumbs_b: np.ndarray | None = None,
                 centre: float = 0.3, block: int = 512, desc: str = "dedup verify",
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Verification score of pairs (a[i], b[j]): align, then correlate the centre AND the surroundings.

    The alignment (zoom combination: a at 1 vs b at each zoom, each zoom of a vs b; translation) is
    the highest band-limited phase-correlation peak; b's thumbnail is shifted onto a's and the normalised
    cross-correlation is measured separately inside the central disc (radius `centre` x side, around
    either image's centre: the white cell) and outside it (the field around the cell: red cells,
    platelets). The pair score is min(centre NCC, surroundings NCC):
    a re-imaged field moves as a whole and scores ~0.9-1, distinct cells sharing a similar centred
    blob have uncorrelated surroundings (< ~0.8), and the same cell pasted on another field fails too.
    Works at any thumbnail side t (the spectra must come from the same thumbnails).

    Returns (score, offset): offset = length of the translation as a fraction of the side, i.e. how far
    the centred cell of b lies from that of a (PBC images one field once per centred cell: two
    neighbouring cells give two images of one field with offset ~0.3-0.5, which are distinct cells).
    """
    spec_b = spec_a if spec_b is None else spec_b
    thumbs_b = thumbs_a if thumbs_b is None else thumbs_b
    g = _geometry(thumbs_a.shape[-1])
    t, h = g.t, g.t // 2
    scores = np.zeros(len(i), np.float32)
    offsets = np.zeros(len(i), np.float32)
    rad2 = (centre * t) ** 2
    yy = g.grid[:, None] ** 2
    inner_a = (yy + g.grid[None, :] ** 2 <= rad2)[None]
    zoom_a = np.array([c[0] for c in _COMBOS])
    zoom_b = np.array([c[1] for c in _COMBOS])
    for start in tqdm(range(0, len(i), block), desc=desc, disable=None, leave=False):
        bi, bj = i[start:start + block], j[start:start + block]
        n = len(bi)
        combo, dy, dx = _best_alignment(spec_a, spec_b, bi, bj)
        a = thumbs_a[bi, zoom_a[combo]].astype(np.float32)
        # b shifted by (dy, dx): a window of b zero-padded by t/2 on every side
        padded = np.pad(thumbs_b[bj, zoom_b[combo]], ((0, 0), (h, h), (h, h)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (t, t), axis=(1, 2))
        b = windows[np.arange(n), h - dy, h - dx].astype(np.float32)
        ys, xs = g.grid[None, :] - dy[:, None], g.grid[None, :] - dx[:, None]   # b's own coordinates
        valid = ((np.abs(ys) <= (t - 1) / 2.0)[:, :, None] & (np.abs(xs) <= (t - 1) / 2.0)[:, None, :])
        inner = inner_a | ((ys ** 2)[:, :, None] + (xs ** 2)[:, None, :] <= rad2)
        ring = _masked_ncc(a, b, (valid & ~inner).astype(np.float32))
        cen = _masked_ncc(a, b, (valid & inner).astype(np.float32))
        scores[start:start + n] = np.minimum(ring, cen)
        offsets[start:start + n] = np.hypot(dy, dx) / t
    return scores, offsets


_SHARED: tuple = ()


def _verify_chunk(bounds: tuple[int, int], forked: bool = True) -> tuple[np.ndarray, np.ndarray]:
    global _FFT_WORKERS
    if forked:  # one process per core already: no FFT threads (and none inherited from the parent)
        _FFT_WORKERS = 1
    spec_a, ta, i, j, spec_b, tb, centre = _SHARED
    lo, hi = bounds
    return verify_pairs(spec_a, ta, i[lo:hi], j[lo:hi], spec_b, tb, centre=centre)


def parallel_verify(args: tuple, workers: int, min_pairs: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """verify_pairs over `workers` forked processes (they inherit the arrays; each pair's result does
    not depend on the split, so the output is the same as one process's)."""
    global _SHARED
    n = len(args[2])
    nw = min(n_workers(workers), max(1, n // min_pairs))
    if nw <= 1 or "fork" not in mp.get_all_start_methods():
        _SHARED = args
        try:
            return _verify_chunk((0, n), forked=False)
        finally:
            _SHARED = ()
    edges = np.linspace(0, n, 4 * nw + 1).astype(int)
    _SHARED = args
    try:
        with mp.get_context("fork").Pool(nw) as pool:
            parts = pool.map(_verify_chunk, list(zip(edges[:-1], edges[1:])), chunksize=1)
    finally:
        _SHARED = ()
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
