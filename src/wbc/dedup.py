"""Near-duplicate removal: the seed paper's hash rule, and a verified mode that is correct on real data.

Pipeline (one decode per image, see `image_features`):
  1. features: AHash and PHash (64-bit, bit-identical to `imagehash`), sharpness (mean Sobel
     gradient magnitude of the greyscale image at full resolution), sha256, and a verification
     descriptor (grey thumbnails at three zooms) plus a shift-robust embedding (low-frequency
     Fourier magnitude of the thumbnail).
  2. candidates: vectorised, blocked Hamming search over packed uint64 codes (`hamming_pairs`);
     in verified mode, loosened hash thresholds united with nearest neighbours of the embedding.
  3. verification (verified mode): alignment by band-limited phase correlation over a small zoom
     search, then normalised cross-correlation of the aligned thumbnails, separately over the central
     disc (the white cell) and over its surroundings (red cells that move with it in a re-imaged
     field); score = min of the two, and the centred cells must coincide (small translation; see
     `verify_pairs`). Byte-identical images (same sha256) are duplicates in both modes.
  4. groups: connected components by breadth-first search; a group keeps its sharpest image,
     ties broken by the smallest key.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import cv2
import imagehash
import numpy as np
import pandas as pd
import scipy.fft
from PIL import Image
from tqdm import tqdm

from wbc.errors import ConfigError

#: Thumbnail side used for verification (pixels).
THUMB = 64
#: Zoom factors precomputed per image (zoom-in about the centre); 1/z is covered by swapping roles.
ZOOMS = (1.0, 1.05, 1.10)
#: Frequency band (radius in bins, (low, high]) of the phase correlation: without the lowest
#: frequencies (the centred cell blob, shared by distinct cells) and the highest (blur, JPEG).
BAND = (6, 28)
#: Embedding: low-frequency window of the Fourier magnitude (|ky| <= EMB_K, 0 <= kx <= EMB_K).
EMB_K = 8

#: Defaults of the verified mode (all overridable through find_groups(**params)).
VERIFIED_DEFAULTS: dict[str, Any] = {
    "cand_ahash": 11,       # hash candidates (the paper rule): AHash distance < this ...
    "cand_phash": 14,       # ... and PHash distance < this
    "knn": 12,              # plus each image's k nearest neighbours in the shift-robust embedding
    "verify_threshold": 0.80,  # min(centre NCC, surroundings NCC) after alignment needed to confirm a pair
    "centre": 0.30,         # radius of the central disc (the white cell), as a fraction of the image side
    "max_offset": 0.20,     # the centred cells must coincide: translation <= this fraction of the side
}
PAPER_DEFAULTS: dict[str, Any] = {"ahash_threshold": 11, "phash_threshold": 14}
MODES = ("verified", "paper")


# --------------------------------------------------------------------------- features


@dataclass
class Features:
    """Per-image features, row i belongs to keys[i]; rows of unreadable images are in `errors` only."""

    keys: list[Any]
    sha256: np.ndarray      # object array of hex strings
    ahash: np.ndarray       # uint64, imagehash bit order (first bit = most significant)
    phash: np.ndarray       # uint64
    sharpness: np.ndarray   # float64, mean Sobel gradient magnitude
    thumbs: np.ndarray      # uint8 (N, len(ZOOMS), THUMB, THUMB)
    embed: np.ndarray       # float32 (N, D), L2-normalised
    errors: dict[Any, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, idx: Sequence[int]) -> "Features":
        """Rows `idx` as a new Features (errors are not carried over)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Features([self.keys[i] for i in idx], self.sha256[idx], self.ahash[idx], self.phash[idx],
                        self.sharpness[idx], self.thumbs[idx], self.embed[idx])

    @staticmethod
    def concat(parts: Sequence["Features"]) -> "Features":
        """Rows of all parts, in order."""
        keys = [k for p in parts for k in p.keys]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        errors = {k: v for p in parts for k, v in p.errors.items()}
        return Features(keys, cat("sha256"), cat("ahash"), cat("phash"), cat("sharpness"), cat("thumbs"),
                        cat("embed"), errors)


def _decode(data: bytes) -> Image.Image:
    """The project's one decoding path (full decode, 8-bit RGB)."""
    from wbc.store import decode_image

    return decode_image(data)


def hash_to_int(h: imagehash.ImageHash) -> int:
    """An imagehash 8x8 hash as an int, same bit order as str(h) (first bit = most significant)."""
    return int.from_bytes(np.packbits(np.asarray(h.hash, dtype=bool).ravel()).tobytes(), "big")


def sharpness(grey: np.ndarray) -> float:
    """Mean Sobel gradient magnitude sqrt(gx^2 + gy^2) of a uint8 greyscale image at full resolution
    (OpenCV 3x3 horizontal and vertical Sobel; float32, within 1e-8 relative of float64, 10x faster)."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    # numpy's pairwise float64 sum is order-fixed (cv2.mean's threaded reduction is not), and the
    # rounding makes byte-identical copies tie exactly so the key decides, run after run.
    return round(float(np.mean(cv2.magnitude(gx, gy), dtype=np.float64)), 6)


def _zoom_thumbs(grey: np.ndarray) -> np.ndarray:
    """Grey thumbnails of the field at ZOOMS (zoom-in about the centre), uint8 (len(ZOOMS), THUMB, THUMB)."""
    base = cv2.resize(grey, (2 * THUMB, 2 * THUMB), interpolation=cv2.INTER_AREA)
    out = np.empty((len(ZOOMS), THUMB, THUMB), np.uint8)
    c = (2 * THUMB - 1) / 2.0
    for z_i, z in enumerate(ZOOMS):
        s = z / 2.0  # base (2T) -> T with zoom z
        m = np.array([[s, 0, (THUMB - 1) / 2.0 - s * c], [0, s, (THUMB - 1) / 2.0 - s * c]], np.float64)
        src = base if z == 1.0 else cv2.GaussianBlur(base, (0, 0), 0.5)
        out[z_i] = cv2.warpAffine(src, m, (THUMB, THUMB), flags=cv2.INTER_AREA if z == 1.0 else cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)
    out[0] = cv2.resize(base, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return out


_HANN = np.outer(np.hanning(THUMB), np.hanning(THUMB)).astype(np.float32)


def _embedding(rgb: np.ndarray) -> np.ndarray:
    """Shift-robust embedding: square-root Fourier magnitude of the windowed saturation thumbnail at
    low frequencies (translation changes only the phase; +-10 % zoom barely moves low frequencies)."""
    small = cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    mag = np.abs(np.fft.rfft2((sat - sat.mean()) * _HANN))
    low = np.concatenate([mag[: EMB_K + 1, : EMB_K + 1], mag[-EMB_K:, : EMB_K + 1]], axis=0)
    return np.sqrt(low).ravel().astype(np.float32)


def standardise(emb: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Embeddings standardised per dimension (statistics of `ref`, default `emb`) and L2-normalised."""
    ref = emb if ref is None else ref
    x = (emb - ref.mean(axis=0)) / (ref.std(axis=0) + 1e-6)
    return (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)).astype(np.float32)


def image_features(data: bytes) -> dict[str, Any]:
    """All features of one image from its bytes, decoding it once. Raises on unreadable data."""
    img = _decode(data)
    grey_img = img.convert("L")
    grey = np.asarray(grey_img)
    thumbs = _zoom_thumbs(grey)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "ahash": hash_to_int(imagehash.average_hash(grey_img)),
        "phash": hash_to_int(imagehash.phash(grey_img)),
        "sharpness": sharpness(grey),
        "thumbs": thumbs,
        "embed": _embedding(np.asarray(img)),
    }


def _work(item: tuple[Any, bytes | None, str | None]) -> tuple[Any, dict[str, Any] | None, str | None]:
    key, data, err = item
    if err is not None:
        return key, None, err
    try:
        return key, image_features(data), None
    except Exception as exc:  # noqa: BLE001 - one unreadable image is reported, not fatal
        return key, None, f"{type(exc).__name__}: {exc}".strip()


def _load_all(load_fn: Callable[[Any], bytes], keys: Iterable[Any]) -> Iterable[tuple[Any, bytes | None, str | None]]:
    for key in keys:
        try:
            yield key, load_fn(key), None
        except Exception as exc:  # noqa: BLE001
            yield key, None, f"{type(exc).__name__}: {exc}".strip()


def n_workers(workers: int) -> int:
    """0 = all cores available to this process."""
    if workers and workers > 0:
        return int(workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def hash_images(load_fn: Callable[[Any], bytes], keys: Sequence[Any], workers: int = 0,
                desc: str = "dedup features") -> Features:
    """Features of every key (`load_fn(key) -> bytes`), in parallel over `workers` processes.

    Bytes are read in this process (memory-mapped store or files) and decoded in the workers.
    Unreadable images go to `Features.errors` (key -> reason) and are left out of the rows.
    """
    keys = list(keys)
    nw = min(n_workers(workers), max(1, len(keys) // 64))
    items = _load_all(load_fn, keys)
    if nw <= 1:
        results = map(_work, items)
        pool = None
    else:
        pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(nw)
        results = pool.imap(_work, items, chunksize=16)
    rows: list[tuple[Any, dict[str, Any]]] = []
    errors: dict[Any, str] = {}
    try:
        for key, feat, err in tqdm(results, total=len(keys), desc=desc, disable=None, leave=False):
            if feat is None:
                errors[key] = err or "unreadable"
            else:
                rows.append((key, feat))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return _stack(rows, errors)


def _stack(rows: list[tuple[Any, dict[str, Any]]], errors: dict[Any, str]) -> Features:
    n = len(rows)
    get = lambda name: [f[name] for _, f in rows]  # noqa: E731
    return Features(
        keys=[k for k, _ in rows],
        sha256=np.array(get("sha256"), dtype=object),
        ahash=np.array(get("ahash"), dtype=np.uint64).reshape(n),
        phash=np.array(get("phash"), dtype=np.uint64).reshape(n),
        sharpness=np.array(get("sharpness"), dtype=np.float64).reshape(n),
        thumbs=np.stack(get("thumbs")) if n else np.zeros((0, len(ZOOMS), THUMB, THUMB), np.uint8),
        embed=np.stack(get("embed")) if n else np.zeros((0, 2 * (EMB_K + 1) * EMB_K + EMB_K + 1), np.float32),
        errors=errors,
    )


# --------------------------------------------------------------------------- candidate search


def popcount64(x: np.ndarray) -> np.ndarray:
    """Bit count of uint64 values (numpy >= 2 bitwise_count, else a byte lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # pragma: no cover
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(-1, dtype=np.uint8)  # pragma: no cover


def hamming_pairs(a: np.ndarray, below: int, b: np.ndarray | None = None, *, a2: np.ndarray | None = None,
                  below2: int | None = None, b2: np.ndarray | None = None, block: int = 1 << 24,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) with popcount(a[i] ^ b[j]) < below (and, if given, a2/b2 distance < below2).

    Without `b`: pairs within `a`, i < j. Vectorised in row blocks of about `block` distances
    (memory stays bounded), no Python loop over pairs. Returns sorted int64 arrays (i, j).
    """
    self_join = b is None
    b = a if self_join else b
    b2 = a2 if self_join else b2
    n, m = len(a), len(b)
    rows = max(1, block // max(m, 1))
    out_i, out_j = [], []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        if self_join:  # only columns j > i are needed: skip the columns before `start`
            cols = slice(start, m)
        else:
            cols = slice(0, m)
        d = popcount64(a[start:stop, None] ^ b[None, cols])
        mask = d < below
        if self_join:
            mask &= np.arange(start, stop)[:, None] < np.arange(cols.start, m)[None, :]
        ii, jj = np.nonzero(mask)
        ii += start
        jj += cols.start
        if a2 is not None and below2 is not None and len(ii):
            keep = popcount64(a2[ii] ^ b2[jj]) < below2
            ii, jj = ii[keep], jj[keep]
        out_i.append(ii.astype(np.int64))
        out_j.append(jj.astype(np.int64))
    i = np.concatenate(out_i) if out_i else np.zeros(0, np.int64)
    j = np.concatenate(out_j) if out_j else np.zeros(0, np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order]


def knn_pairs(emb: np.ndarray, k: int, emb_b: np.ndarray | None = None, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) where j is among the k nearest neighbours of i by cosine similarity (blocked matmul).

    Without `emb_b`: within `emb`, returned with i < j, deduplicated. With `emb_b`: i indexes emb, j emb_b,
    and neighbours are taken in both directions.
    """
    if k <= 0 or len(emb) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    self_join = emb_b is None
    other = emb if self_join else emb_b
    kk = min(k, len(other) - (1 if self_join else 0))
    if kk <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = _knn_one_way(emb, other, kk, self_join, block)
    if not self_join:
        kb = min(k, len(emb))
        bj, bi = _knn_one_way(other, emb, kb, False, block)  # neighbours of b's rows among a's
        i, j = np.concatenate([i, bi]), np.concatenate([j, bj])
    else:
        i, j = np.minimum(i, j), np.maximum(i, j)
    return _unique_pairs(i, j)


def _knn_one_way(a: np.ndarray, b: np.ndarray, kk: int, self_join: bool, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) for the kk nearest rows j of b to each row i of a (self excluded when a is b)."""
    pi, pj = [], []
    for start in range(0, len(a), block):
        sim = a[start:start + block] @ b.T
        if self_join:
            sim[np.arange(sim.shape[0]), np.arange(start, start + sim.shape[0])] = -np.inf
        nb = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        pi.append(np.repeat(np.arange(start, start + sim.shape[0]), kk))
        pj.append(nb.ravel())
    return np.concatenate(pi), np.concatenate(pj)


def _unique_pairs(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(i) == 0:
        return i.astype(np.int64), j.astype(np.int64)
    pairs = np.unique(np.stack([i, j], 1).astype(np.int64), axis=0)
    return pairs[:, 0], pairs[:, 1]


def exact_pairs(sha_a: np.ndarray, sha_b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of byte-identical images (same sha256); i < j within one set, or all (i, j) across two."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sha_a):
        groups.setdefault(s, []).append(i)
    pi, pj = [], []
    if sha_b is None:
        for members in groups.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    pi.append(members[x])
                    pj.append(members[y])
    else:
        for j, s in enumerate(sha_b):
            for i in groups.get(s, ()):
                pi.append(i)
                pj.append(j)
    return _unique_pairs(np.array(pi, np.int64), np.array(pj, np.int64))


# --------------------------------------------------------------------------- verification


def _band_mask() -> np.ndarray:
    ky = np.fft.fftfreq(THUMB) * THUMB
    kx = np.fft.rfftfreq(THUMB) * THUMB
    r = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return ((r <= BAND[1]) & (r > BAND[0])).astype(np.float32)


_BAND_MASK = _band_mask()
_BAND_N = float(_BAND_MASK[:, 1:-1].sum() * 2 + _BAND_MASK[:, [0, -1]].sum())


def spectra(thumbs: np.ndarray, block: int = 1024) -> np.ndarray:
    """Unit-magnitude, band-limited spectra of the windowed thumbnails, cached once per image:
    complex64 (N, len(ZOOMS), THUMB, THUMB//2+1)."""
    out = np.empty((*thumbs.shape[:2], THUMB, THUMB // 2 + 1), np.complex64)
    for start in range(0, len(thumbs), block):
        x = thumbs[start:start + block].astype(np.float32)
        x = (x - x.mean(axis=(-1, -2), keepdims=True)) * _HANN
        f = scipy.fft.rfft2(x, workers=-1)
        out[start:start + block] = f / (np.abs(f) + 1e-6) * _BAND_MASK
    return out


_YY, _XX = np.mgrid[0:THUMB, 0:THUMB]
_C = (THUMB - 1) / 2.0
_COMBOS = [(0, z) for z in range(len(ZOOMS))] + [(z, 0) for z in range(1, len(ZOOMS))]


def _masked_ncc(a: np.ndarray, b: np.ndarray, w: np.ndarray, min_frac: float = 0.08) -> np.ndarray:
    """Normalised cross-correlation of image stacks a, b (n, T, T) over the 0/1 weights w; 0 when the
    masked area is below `min_frac` of the thumbnail."""
    nw = w.sum((1, 2)) + 1e-6
    a0 = (a - ((a * w).sum((1, 2)) / nw)[:, None, None]) * w
    b0 = (b - ((b * w).sum((1, 2)) / nw)[:, None, None]) * w
    ncc = (a0 * b0).sum((1, 2)) / np.sqrt((a0 ** 2).sum((1, 2)) * (b0 ** 2).sum((1, 2)) + 1e-6)
    return np.where(nw < min_frac * THUMB * THUMB, 0.0, ncc)


def _best_alignment(spec_a: np.ndarray, spec_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, the zoom combination (_COMBOS index) and translation (dy, dx) in [-T/2, T/2) with
    a(x) ~ b(x - d) maximising the band-limited phase-correlation peak, and that peak."""
    n = len(spec_a)
    best = np.full(n, -np.inf, np.float32)
    combo = np.zeros(n, np.int64)
    pos = np.zeros(n, np.int64)
    for c, (a_z, b_z) in enumerate(_COMBOS):
        r = scipy.fft.irfft2(spec_a[:, a_z] * np.conj(spec_b[:, b_z]), s=(THUMB, THUMB), workers=-1).reshape(n, -1)
        pk = r.argmax(axis=1)
        val = r[np.arange(n), pk]
        upd = val > best
        best[upd], combo[upd], pos[upd] = val[upd], c, pk[upd]
    dy, dx = pos // THUMB, pos % THUMB
    dy = np.where(dy >= THUMB // 2, dy - THUMB, dy)
    dx = np.where(dx >= THUMB // 2, dx - THUMB, dx)
    return combo, dy, dx, best * (THUMB * THUMB) / _BAND_N


def verify_pairs(spec_a: np.ndarray, thumbs_a: np.ndarray, i: np.ndarray, j: np.ndarray,
                 spec_b: np.ndarray | None = None, thumbs_b: np.ndarray | None = None,
                 centre: float = 0.3, block: int = 1024, desc: str = "dedup verify",
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Verification score of pairs (a[i], b[j]): align, then correlate the centre AND the surroundings.

    The alignment (zoom combination: a at 1 vs b at each zoom, each zoom of a vs b; translation) is
    the highest band-limited phase-correlation peak; b's thumbnail is shifted onto a's and the normalised
    cross-correlation is measured separately inside the central disc (radius `centre` x side, around
    either image's centre: the white cell) and outside it (the field around the cell: red cells,
    platelets). The pair score is min(centre NCC, surroundings NCC):
    a re-imaged field moves as a whole and scores ~0.9-1, distinct cells sharing a similar centred
    blob have uncorrelated surroundings (< ~0.8), and the same cell pasted on another field fails too.

    Returns (score, offset): offset = length of the translation as a fraction of the side, i.e. how far
    the centred cell of b lies from that of a (PBC images one field once per centred cell: two
    neighbouring cells give two images of one field with offset ~0.3-0.5, which are distinct cells).
    """
    spec_b = spec_a if spec_b is None else spec_b
    thumbs_b = thumbs_a if thumbs_b is None else thumbs_b
    scores = np.zeros(len(i), np.float32)
    offsets = np.zeros(len(i), np.float32)
    rad2 = (centre * THUMB) ** 2
    inner_a = ((_YY - _C) ** 2 + (_XX - _C) ** 2 <= rad2)[None]
    zoom_a = np.array([c[0] for c in _COMBOS])
    zoom_b = np.array([c[1] for c in _COMBOS])
    for start in tqdm(range(0, len(i), block), desc=desc, disable=None, leave=False):
        bi, bj = i[start:start + block], j[start:start + block]
        combo, dy, dx, _ = _best_alignment(spec_a[bi], spec_b[bj])
        yy, xx = _YY[None] - dy[:, None, None], _XX[None] - dx[:, None, None]
        valid = (yy >= 0) & (yy < THUMB) & (xx >= 0) & (xx < THUMB)
        a = thumbs_a[bi, zoom_a[combo]].astype(np.float32)
        b = thumbs_b[bj[:, None, None], zoom_b[combo][:, None, None],
                     np.clip(yy, 0, THUMB - 1), np.clip(xx, 0, THUMB - 1)].astype(np.float32)
        inner = inner_a | ((yy - _C) ** 2 + (xx - _C) ** 2 <= rad2)
        ring = _masked_ncc(a, b, (valid & ~inner).astype(np.float32))
        cen = _masked_ncc(a, b, (valid & inner).astype(np.float32))
        scores[start:start + len(bi)] = np.minimum(ring, cen)
        offsets[start:start + len(bi)] = np.hypot(dy, dx) / THUMB
    return scores, offsets


# --------------------------------------------------------------------------- groups


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph (n nodes, edges i-j) by breadth-first search.

    Returns a component id per node; ids are numbered in order of each component's smallest node.
    """
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in zip(np.asarray(i).tolist(), np.asarray(j).tolist()):
        adj[a].append(b)
        adj[b].append(a)
    comp = np.full(n, -1, np.int64)
    next_id = 0
    for start in range(n):
        if comp[start] >= 0:
            continue
        comp[start] = next_id
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if comp[v] < 0:
                    comp[v] = next_id
                    queue.append(v)
        next_id += 1
    return comp


def choose_kept(comp: np.ndarray, sharp: np.ndarray, keys: Sequence[Any]) -> np.ndarray:
    """One kept image per component: highest sharpness; ties broken by the smallest key (str order)."""
    order = sorted(range(len(comp)), key=lambda x: (comp[x], -float(sharp[x]), str(keys[x])))
    keep = np.zeros(len(comp), bool)
    seen: set[int] = set()
    for x in order:
        if comp[x] not in seen:
            seen.add(int(comp[x]))
            keep[x] = True
    return keep


@dataclass
class GroupResult:
    """Outcome of find_groups on Features rows: `group[i]` (same id = same cell), `keep[i]`, and the pairs."""

    mode: str
    group: np.ndarray
    keep: np.ndarray
    pairs: pd.DataFrame   # i, j, ahash_dist, phash_dist, score, offset, exact, candidate, confirmed
    params: dict[str, Any]

    @property
    def n_candidates(self) -> int:
        return int(self.pairs["candidate"].sum())

    @property
    def n_confirmed(self) -> int:
        return int(self.pairs["confirmed"].sum())

    def group_sizes(self) -> np.ndarray:
        """Size of each image's group."""
        return np.bincount(self.group)[self.group] if len(self.group) else np.zeros(0, np.int64)

    def best_pair_stats(self) -> pd.DataFrame:
        """Per image: the hash distances and score of its strongest confirmed link (NaN when none)."""
        c = self.pairs[self.pairs["confirmed"]]
        both = pd.concat([c.rename(columns={"i": "node"}).drop(columns="j"),
                          c.rename(columns={"j": "node"}).drop(columns="i")])
        if both.empty:
            return pd.DataFrame(columns=["ahash_dist", "phash_dist", "score"])
        both = both.sort_values(["node", "score", "phash_dist"], ascending=[True, False, True], kind="stable")
        return both.groupby("node").first()[["ahash_dist", "phash_dist", "score"]]


def _params(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    if mode not in MODES:
        raise ConfigError(f"dedup mode {mode!r} is unknown; valid: {', '.join(MODES)}")
    p = {**PAPER_DEFAULTS, **VERIFIED_DEFAULTS}
    p.update({k: v for k, v in params.items() if v is not None and k in p})
    return p


def candidate_pairs(f: Features, mode: str, p: dict[str, Any], other: Features | None = None) -> pd.DataFrame:
    """Candidate pairs of the mode (within f, or f x other) with hash distances; exact copies flagged."""
    ob = other if other is not None else None
    b_a, b_p = (None, None) if ob is None else (ob.ahash, ob.phash)
    if mode == "paper":
        i, j = hamming_pairs(f.ahash, int(p["ahash_threshold"]), b_a, a2=f.phash,
                             below2=int(p["phash_threshold"]), b2=b_p)
    else:
        hi, hj = hamming_pairs(f.ahash, int(p["cand_ahash"]), b_a, a2=f.phash, below2=int(p["cand_phash"]), b2=b_p)
        if ob is None:
            ki, kj = knn_pairs(standardise(f.embed), int(p["knn"]))
        else:
            ref = np.concatenate([f.embed, ob.embed])
            ki, kj = knn_pairs(standardise(f.embed, ref), int(p["knn"]), standardise(ob.embed, ref))
        i, j = _unique_pairs(np.concatenate([hi, ki]), np.concatenate([hj, kj]))
    ei, ej = exact_pairs(f.sha256, None if ob is None else ob.sha256)
    cand = pd.DataFrame({"i": i, "j": j, "candidate": True})
    exact = pd.DataFrame({"i": ei, "j": ej, "exact": True})
    df = cand.merge(exact, on=["i", "j"], how="outer")
    df["candidate"] = df["candidate"].fillna(False).astype(bool)
    df["exact"] = df["exact"].fillna(False).astype(bool)
    df = df.sort_values(["i", "j"], kind="stable").reset_index(drop=True)
    bA = f.ahash if ob is None else ob.ahash
    bP = f.phash if ob is None else ob.phash
    ii, jj = df["i"].to_numpy(np.int64), df["j"].to_numpy(np.int64)
    df["ahash_dist"] = popcount64(f.ahash[ii] ^ bA[jj]).astype(np.int64)
    df["phash_dist"] = popcount64(f.phash[ii] ^ bP[jj]).astype(np.int64)
    return df


def confirm(f: Features, df: pd.DataFrame, mode: str, p: dict[str, Any], other: Features | None = None) -> pd.DataFrame:
    """Score and confirm candidate pairs: exact copies always; paper mode every candidate;
    verified mode candidates with verification score >= verify_threshold whose centred cells coincide
    (offset <= max_offset). `score` and `offset` (see `verify_pairs`) are reported in both modes."""
    ii, jj = df["i"].to_numpy(np.int64), df["j"].to_numpy(np.int64)
    if len(df):
        used_a = np.unique(ii if other is not None else np.concatenate([ii, jj]))
        sa = np.zeros((len(f), *spectra(f.thumbs[:0]).shape[1:]), np.complex64)  # untouched rows stay lazy
        sa[used_a] = spectra(f.thumbs[used_a])
        if other is None:
            score, offset = verify_pairs(sa, f.thumbs, ii, jj, centre=float(p["centre"]))
        else:
            used_b = np.unique(jj)
            sb = np.zeros((len(other), *sa.shape[1:]), np.complex64)
            sb[used_b] = spectra(other.thumbs[used_b])
            score, offset = verify_pairs(sa, f.thumbs, ii, jj, sb, other.thumbs, centre=float(p["centre"]))
    else:
        score = offset = np.zeros(0, np.float32)
    df = df.assign(score=np.round(score.astype(np.float64), 4), offset=np.round(offset.astype(np.float64), 4))
    if mode == "paper":
        df["confirmed"] = df["candidate"] | df["exact"]
    else:
        same = (df["score"] >= float(p["verify_threshold"])) & (df["offset"] <= float(p["max_offset"]))
        df["confirmed"] = df["exact"] | (df["candidate"] & same)
    return df


def find_groups(features: Features, mode: str = "verified", **params: Any) -> GroupResult:
    """Duplicate groups among the Features rows (see the module docstring)."""
    p = _params(mode, params)
    df = confirm(features, candidate_pairs(features, mode, p), mode, p)
    c = df[df["confirmed"]]
    comp = components(len(features), c["i"].to_numpy(), c["j"].to_numpy())
    keep = choose_kept(comp, features.sharpness, features.keys)
    cols = ["i", "j", "ahash_dist", "phash_dist", "score", "offset", "exact", "candidate", "confirmed"]
    return GroupResult(mode, comp, keep, df[cols], p)


def resolve_conflicts(result: GroupResult, labels: Sequence[str], sharp: np.ndarray, keys: Sequence[Any],
                      on_conflict: str = "drop") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the label-conflict rule to groups whose members carry different labels.

    Returns (keep, conflict, label_out): `conflict[i]` marks members of conflict groups;
    on_conflict="drop" keeps none of them; "majority" keeps the sharpest member carrying the majority
    label (ties between labels: no majority -> dropped), relabelled to it.
    """
    if on_conflict not in ("drop", "majority"):
        raise ConfigError(f"dedup on_conflict {on_conflict!r} is unknown; valid: drop, majority")
    labels = np.asarray(labels, dtype=object)
    keep = result.keep.copy()
    conflict = np.zeros(len(keep), bool)
    out = labels.copy()
    df = pd.DataFrame({"g": result.group, "label": labels})
    nlab = df.groupby("g")["label"].nunique()
    for g in nlab.index[nlab > 1]:
        members = np.flatnonzero(result.group == g)
        conflict[members] = True
        keep[members] = False
        if on_conflict == "majority":
            counts = pd.Series(labels[members]).value_counts()
            if len(counts) > 1 and counts.iloc[0] == counts.iloc[1]:
                continue
            maj = counts.index[0]
            cand = [m for m in members if labels[m] == maj]
            best = min(cand, key=lambda m: (-float(sharp[m]), str(keys[m])))
            keep[best] = True
    return keep, conflict, out


# --------------------------------------------------------------------------- across sets


def cross_duplicates(loaders_by_set: dict[str, tuple[Callable[[Any], bytes], Sequence[Any]]],
                     params: dict[str, Any] | None = None, workers: int = 0) -> pd.DataFrame:
    """Confirmed duplicate pairs across different sets (e.g. split names), same test as the stage.

    `loaders_by_set`: set name -> (load_fn, keys), or set name -> Features already computed.
    `params`: the `dedup` params section (mode, thresholds). Columns:
    set_a, id_a, set_b, id_b, ahash_dist, phash_dist, score (set_a < set_b, sorted).
    """
    params = dict(params or {})
    mode = params.pop("mode", "verified") or "verified"
    workers = int(params.pop("workers", workers) or workers)
    p = _params(mode, params)
    feats = {}
    for name in sorted(loaders_by_set):
        v = loaders_by_set[name]
        feats[name] = v if isinstance(v, Features) else hash_images(v[0], v[1], workers, desc=f"features {name}")
    rows = []
    names = sorted(feats)
    for x, a in enumerate(names):
        for b in names[x + 1:]:
            fa, fb = feats[a], feats[b]
            if not len(fa) or not len(fb):
                continue
            df = confirm(fa, candidate_pairs(fa, mode, p, fb), mode, p, fb)
            df = df[df["confirmed"]]
            rows.append(pd.DataFrame({
                "set_a": a, "id_a": [fa.keys[i] for i in df["i"]], "set_b": b, "id_b": [fb.keys[j] for j in df["j"]],
                "ahash_dist": df["ahash_dist"].to_numpy(), "phash_dist": df["phash_dist"].to_numpy(),
                "score": df["score"].to_numpy()}))
    cols = ["set_a", "id_a", "set_b", "id_b", "ahash_dist", "phash_dist", "score"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.concat(rows, ignore_index=True)[cols].sort_values(cols[:4], kind="stable").reset_index(drop=True)
