"""Near-duplicate removal: the seed paper's hash rule, and a verified mode that is correct on real data.

Each mode decodes only what it needs (`hash_images(..., parts=PARTS[mode])`):
  - paper features (full decode, exactly as `imagehash` sees the file): AHash and PHash (64-bit,
    computed by `imagehash` itself) and sharpness (mean Sobel gradient magnitude of the greyscale
    image at full resolution);
  - verification features (JPEG decoded at reduced scale, about 4x cheaper): sha256, grey thumbnails
    at three zooms and a shift-robust embedding (low-frequency Fourier magnitude of the thumbnail).
Paper features missing for an image that ends up in a group (verified mode) are computed then, from
the same loader: sharpness decides the kept image and the hash distances are reported.

  1. candidates: paper mode, the vectorised, blocked Hamming search over packed uint64 codes
     (`hamming_pairs`); verified mode, the k nearest neighbours of the embedding. Byte-identical
     images (same sha256) are duplicates in both modes.
  2. verification (verified mode): alignment by band-limited phase correlation over a small zoom
     search, then normalised cross-correlation of the aligned thumbnails, separately over the central
     disc (the white cell) and over its surroundings (red cells that move with it in a re-imaged
     field); score = min of the two, and the centred cells must coincide (small translation; see
     `verify_pairs`). A coarse pass on half-size thumbnails screens every candidate; only pairs it
     does not rule out get the full-size verification (`confirm`).
  3. groups: connected components by breadth-first search; a group keeps its sharpest image,
     ties broken by the smallest key.
"""
from __future__ import annotations

import functools
import hashlib
import multiprocessing as mp
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import imagehash
import numpy as np
import pandas as pd
import scipy.fft
from PIL import Image
from tqdm import tqdm

from wbc import ann, spill
from wbc.core.errors import ConfigError
from wbc.core.parallel import n_workers
from wbc.data.store import decode_image

#: Thumbnail side used for verification (pixels); the coarse screening pass uses half of it.
THUMB = 64
COARSE = THUMB // 2
#: Zoom factors precomputed per image (zoom-in about the centre); 1/z is covered by swapping roles.
ZOOMS = (1.0, 1.05, 1.10)
#: Frequency band (radius in bins at THUMB, (low, high]) of the phase correlation: without the lowest
#: frequencies (the centred cell blob, shared by distinct cells) and the highest (blur, JPEG).
BAND = (6, 28)
#: Embedding: low-frequency window of the Fourier magnitude (|ky| <= EMB_K, 0 <= kx <= EMB_K).
EMB_K = 8
EMB_DIM = (2 * EMB_K + 1) * (EMB_K + 1)

#: Defaults of the verified mode (all overridable through find_groups(**params)).
VERIFIED_DEFAULTS: dict[str, Any] = {
    "knn": 12,              # candidates: each image's k nearest neighbours in the shift-robust embedding
    "verify_threshold": 0.80,  # min(centre NCC, surroundings NCC) after alignment needed to confirm a pair
    "centre": 0.30,         # radius of the central disc (the white cell), as a fraction of the image side
    "max_offset": 0.20,     # the centred cells must coincide: translation <= this fraction of the side
    "screen_threshold": 0.50,  # coarse (half-size) score below which a candidate is ruled out
}
PAPER_DEFAULTS: dict[str, Any] = {"ahash_threshold": 11, "phash_threshold": 14}
#: Candidate search engine (both modes): "exact" (the blocked searches below, bit-for-bit the pipeline's
#: default) or "faiss" (wbc.ann: multi-index hashing for the hash rule, a FAISS index for the k-NN).
SEARCH_DEFAULTS: dict[str, Any] = {"search": "exact"}
MODES = ("verified", "paper")
#: Images read and decoded per chunk: bounds the bytes in flight (a Pool's imap would read the whole
#: input ahead of the workers).
CHUNK = 4096
#: From this many images on, the per-image arrays of `hash_images` are spilled to disk.
SPILL_ROWS = 200_000
#: scipy.fft threads of the verification (1 inside forked verification workers)
_FFT_WORKERS = -1
#: Feature parts each mode computes for every image ("paper" = hashes + sharpness, "verify" = thumbnails).
PARTS = {"paper": ("paper",), "verified": ("verify",)}


# --------------------------------------------------------------------------- features


@dataclass
class Features:
    """Per-image features, row i belongs to keys[i]; rows of unreadable images are in `errors` only.

    Paper features (ahash, phash, sharpness) are valid where `has_paper`; `fill_paper` computes the
    missing ones with `loader` (key -> bytes), the function the features were computed from.
    """

    keys: list[Any]
    sha256: np.ndarray      # object array of hex strings
    ahash: np.ndarray       # uint64, imagehash bit order (first bit = most significant)
    phash: np.ndarray       # uint64
    sharpness: np.ndarray   # float64, mean Sobel gradient magnitude (NaN where not computed)
    has_paper: np.ndarray   # bool
    thumbs: np.ndarray      # uint8 (N, len(ZOOMS), THUMB, THUMB); no rows when "verify" was not computed
    coarse: np.ndarray      # uint8 (N, len(ZOOMS), COARSE, COARSE): the same at half size
    embed: np.ndarray       # float32 (N, EMB_DIM)
    errors: dict[Any, str] = field(default_factory=dict)
    loader: Callable[[Any], bytes] | None = None
    workers: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def has_verify(self) -> bool:
        """Whether the verification features (thumbnails, embedding) were computed."""
        return len(self.thumbs) == len(self.keys)

    def fill_paper(self, rows: Iterable[int] | None = None, sharp: bool = True) -> None:
        """Compute the paper features of `rows` (default: all) where they are missing: the hashes, and
        with `sharp` the sharpness too (needed only where it decides: images in groups)."""
        idx = np.arange(len(self)) if rows is None else np.unique(np.asarray(list(rows), dtype=np.int64))
        if len(idx):
            idx = idx[~self.has_paper[idx] | (np.isnan(self.sharpness[idx]) if sharp else False)]
        if not len(idx):
            return
        if self.loader is None:
            raise ConfigError("paper features (hashes, sharpness) are missing and the features have no loader")
        part = hash_images(self.loader, [self.keys[i] for i in idx], self.workers, desc="dedup hashes",
                           parts=("paper", "sharpness") if sharp else ("paper",))
        if part.errors:  # readable once, unreadable now: the source changed under us
            raise ConfigError(f"images became unreadable between two reads: {sorted(map(str, part.errors))[:5]}")
        self.ahash[idx], self.phash[idx] = part.ahash, part.phash
        self.has_paper[idx] = True
        if sharp:
            self.sharpness[idx] = part.sharpness

    def require_verify(self) -> None:
        if not self.has_verify:
            raise ConfigError("verified mode needs the verification features: hash_images(..., parts=('verify', ...))")


def _decode(data: bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    """The project's one decoding path (8-bit RGB; JPEGs at reduced scale >= `draft` when given)."""
    return decode_image(data, draft=draft)


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
    out[0] = cv2.resize(base, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(base, (0, 0), 0.5)
    for z_i, z in enumerate(ZOOMS[1:], start=1):
        s = z / 2.0  # base (2T) -> T with zoom z
        m = np.array([[s, 0, (THUMB - 1) / 2.0 - s * c], [0, s, (THUMB - 1) / 2.0 - s * c]], np.float64)
        out[z_i] = cv2.warpAffine(blurred, m, (THUMB, THUMB), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


@functools.lru_cache(maxsize=4)
def _hann(t: int) -> np.ndarray:
    return np.outer(np.hanning(t), np.hanning(t)).astype(np.float32)


def _embedding(rgb: np.ndarray) -> np.ndarray:
    """Shift-robust embedding: square-root Fourier magnitude of the windowed saturation thumbnail at
    low frequencies (translation changes only the phase; +-10 % zoom barely moves low frequencies)."""
    small = cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    mag = np.abs(scipy.fft.rfft2((sat - sat.mean()) * _hann(THUMB)))
    low = np.concatenate([mag[: EMB_K + 1, : EMB_K + 1], mag[-EMB_K:, : EMB_K + 1]], axis=0)
    return np.sqrt(low).ravel().astype(np.float32)


def standardise(emb: np.ndarray, ref: np.ndarray | Sequence[np.ndarray] | None = None,
                block: int = 65536) -> np.ndarray:
    """Embeddings standardised per dimension (statistics of `ref`, default `emb`; a sequence of
    arrays counts as their concatenation) and L2-normalised.

    In-memory arrays: one vectorised pass. Memory-mapped (spilled) ones: the statistics (float64
    sums) and the output are computed block by block and the output is spilled too, so memory stays
    bounded at a million images."""
    refs = [emb] if ref is None else (list(ref) if isinstance(ref, (list, tuple)) else [ref])
    if not any(isinstance(a, np.memmap) for a in (emb, *refs)):
        r = refs[0] if len(refs) == 1 else np.concatenate(refs)
        x = (emb - r.mean(axis=0)) / (r.std(axis=0) + 1e-6)
        return (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)).astype(np.float32)
    d = emb.shape[1]
    n, s1, s2 = 0, np.zeros(d), np.zeros(d)
    for a in refs:
        for start in range(0, len(a), block):
            b = np.asarray(a[start:start + block], dtype=np.float64)
            n, s1, s2 = n + len(b), s1 + b.sum(axis=0), s2 + (b * b).sum(axis=0)
            spill.release_pages(a)
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean * mean, 0.0))
    out = spill.zeros(tempfile.gettempdir(), "dedup-embedding", emb.shape, np.float32)
    for start in range(0, len(emb), block):
        x = (np.asarray(emb[start:start + block], dtype=np.float64) - mean) / (std + 1e-6)
        out[start:start + len(x)] = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
        spill.release_pages(emb)
        spill.release_pages(out)
    return out


def paper_features(data: bytes, with_sharpness: bool = True) -> dict[str, Any]:
    """AHash, PHash (by `imagehash`, on the fully decoded image) and full-resolution sharpness."""
    grey_img = _decode(data).convert("L")
    out = {"ahash": hash_to_int(imagehash.average_hash(grey_img)), "phash": hash_to_int(imagehash.phash(grey_img))}
    if with_sharpness:
        out["sharpness"] = sharpness(np.asarray(grey_img))
    return out


def verify_features(data: bytes) -> dict[str, Any]:
    """Verification thumbnails and embedding from the image decoded at reduced scale (>= THUMB: a
    360 px PBC crop is decoded at 1/4 scale, 2x cheaper than 1/2 for the same results on real PBC and
    0.3 % less pair recall on the re-imaged benchmark; see reports/dedup/benchmark.md)."""
    img = _decode(data, draft=(THUMB, THUMB))
    thumbs = _zoom_thumbs(np.asarray(img.convert("L")))
    half = np.stack([cv2.resize(z, (COARSE, COARSE), interpolation=cv2.INTER_AREA) for z in thumbs])
    return {"thumbs": thumbs, "coarse": half, "embed": _embedding(np.asarray(img))}


def image_features(data: bytes, parts: Sequence[str] = ("paper", "verify")) -> dict[str, Any]:
    """The requested feature parts of one image from its bytes (plus sha256). Raises on unreadable data."""
    out: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
    if "verify" in parts:
        out.update(verify_features(data))
    if "paper" in parts:
        out.update(paper_features(data, "sharpness" in parts))
    return out


def _work(item: tuple[Any, bytes | None, str | None, tuple[str, ...]]) -> tuple[Any, dict[str, Any] | None, str | None]:
    key, data, err, parts = item
    if err is not None:
        return key, None, err
    try:
        return key, image_features(data, parts), None
    except Exception as exc:  # noqa: BLE001 - one unreadable image is reported, not fatal
        return key, None, f"{type(exc).__name__}: {exc}".strip()


def _load_all(load_fn: Callable[[Any], bytes], keys: Iterable[Any], parts: tuple[str, ...],
              ) -> Iterable[tuple[Any, bytes | None, str | None, tuple[str, ...]]]:
    for key in keys:
        try:
            yield key, load_fn(key), None, parts
        except Exception as exc:  # noqa: BLE001
            yield key, None, f"{type(exc).__name__}: {exc}".strip(), parts


def _one_cv2_thread() -> None:
    """OpenCV's own threads only add overhead on thumbnail-sized images when every core already runs
    a worker (measured: 1.9 ms of CPU per image instead of 1.1 ms). Set in the parent before forking
    (a forked child must not reconfigure OpenCV's thread pool: it deadlocks), or in a spawned worker."""
    cv2.setNumThreads(1)


def _pool(nw: int):
    if "fork" in mp.get_all_start_methods():
        return mp.get_context("fork").Pool(nw)  # inherits the parent's OpenCV setting
    return mp.get_context("spawn").Pool(nw, initializer=_one_cv2_thread)


def hash_images(load_fn: Callable[[Any], bytes], keys: Sequence[Any], workers: int = 0,
                desc: str = "dedup features", parts: Sequence[str] = ("paper", "verify"),
                spill_dir: str | Path | None = None) -> Features:
    """Features of every key (`load_fn(key) -> bytes`), in parallel over `workers` processes.

    `parts`: "paper" (AHash, PHash: full decode; with "sharpness", the sharpness too) and/or "verify"
    (thumbnails, embedding: reduced decode); `PARTS[mode]` is what a mode needs for every image
    (`find_groups` adds the sharpness of the images in groups). Bytes are read in this process (memory-mapped store or
    files), CHUNK images at a time, and decoded in the workers. Unreadable images go to `Features.errors`
    (key -> reason) and are left out of the rows.

    Memory stays bounded at any N: at most CHUNK images' bytes are in flight, and from SPILL_ROWS
    images on (or whenever `spill_dir` is given) the per-image arrays (thumbnails, embedding) are
    written to memory-mapped files in `spill_dir` (default: the system's temporary folder), whose
    pages are handed back to the page cache after every chunk (`wbc.spill.release_pages`).
    """
    keys, parts = list(keys), tuple(sorted(set(parts)))
    if not set(parts) <= {"paper", "sharpness", "verify"} or not ({"paper", "verify"} & set(parts)) \
            or ("sharpness" in parts and "paper" not in parts):
        raise ConfigError(f"unknown feature parts {parts}; valid: paper, verify (+ sharpness with paper)")
    nw = min(n_workers(workers), max(1, len(keys) // 64))
    to_disk = spill_dir is not None or len(keys) >= SPILL_ROWS
    sink = _Sink(len(keys), parts, (spill_dir or tempfile.gettempdir()) if to_disk else None)
    cv2_threads = cv2.getNumThreads()
    _one_cv2_thread()
    pool = _pool(nw) if nw > 1 else None
    errors: dict[Any, str] = {}
    try:
        with tqdm(total=len(keys), desc=desc, disable=None, leave=False) as bar:
            for start in range(0, len(keys), CHUNK):
                items = list(_load_all(load_fn, keys[start:start + CHUNK], parts))
                results = map(_work, items) if pool is None else pool.imap(_work, items, chunksize=32)
                for key, feat, err in results:
                    if feat is None:
                        errors[key] = err or "unreadable"
                    else:
                        sink.add(key, feat)
                    bar.update()
                sink.release()
    finally:
        cv2.setNumThreads(cv2_threads)
        if pool is not None:
            pool.close()
            pool.join()
    return sink.features(errors, load_fn, workers)


class _Sink:
    """Feature rows of `hash_images`, written in arrival order into arrays preallocated for `n`
    rows: in RAM, or memory-mapped in `folder` (the per-image arrays only: the scalars stay in RAM)."""

    ARRAYS = {"thumbs": ((len(ZOOMS), THUMB, THUMB), np.uint8), "coarse": ((len(ZOOMS), COARSE, COARSE), np.uint8),
              "embed": ((EMB_DIM,), np.float32)}

    def __init__(self, n: int, parts: tuple[str, ...], folder: str | Path | None):
        self.parts, self.keys = parts, []
        self.sha = np.empty(n, dtype=object)
        self.ahash, self.phash = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
        self.sharpness = np.full(n, np.nan)
        rows = n if "verify" in parts else 0
        alloc = (lambda name, shape, dt: np.zeros(shape, dt)) if folder is None else \
            (lambda name, shape, dt: spill.zeros(folder, f"dedup-{name}", shape, dt))
        self.arrays = {name: alloc(name, (rows, *shape), dt) for name, (shape, dt) in self.ARRAYS.items()}

    def add(self, key: Any, feat: dict[str, Any]) -> None:
        r = len(self.keys)
        self.keys.append(key)
        self.sha[r] = feat["sha256"]
        if "paper" in self.parts:
            self.ahash[r], self.phash[r] = feat["ahash"], feat["phash"]
        if "sharpness" in self.parts:
            self.sharpness[r] = feat["sharpness"]
        if "verify" in self.parts:
            for name, arr in self.arrays.items():
                arr[r] = feat[name]

    def release(self) -> None:
        for arr in self.arrays.values():
            spill.release_pages(arr)

    def features(self, errors: dict[Any, str], loader: Callable[[Any], bytes] | None, workers: int) -> Features:
        n, verify = len(self.keys), "verify" in self.parts
        cut = {name: arr[:n] if verify else arr for name, arr in self.arrays.items()}
        return Features(keys=self.keys, sha256=self.sha[:n].copy(), ahash=self.ahash[:n].copy(),
                        phash=self.phash[:n].copy(), sharpness=self.sharpness[:n].copy(),
                        has_paper=np.full(n, "paper" in self.parts), errors=errors, loader=loader, workers=workers,
                        **cut)


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
    """(i, j) for the kk nearest rows j of b to each row i of a (self excluded when a is b); ties go to
    the smaller j. Per row, the kk-th best similarity among every 16th column is a lower bound of the
    true kk-th best: only the columns at or above it are sorted (exact result, ~16 kk columns sorted)."""
    pi, pj = [], []
    sample = np.arange(0, len(b), 16) if len(b) >= 64 * kk else None
    for start in range(0, len(a), block):
        sim = a[start:start + block] @ b.T
        rows = np.arange(sim.shape[0])
        if self_join:
            sim[rows, rows + start] = -np.inf
        if sample is None:
            r, c = np.nonzero(np.ones_like(sim, dtype=bool))
        else:
            floor = np.partition(sim[:, sample], len(sample) - kk, axis=1)[:, len(sample) - kk]
            r, c = np.nonzero(sim >= floor[:, None])
        order = np.lexsort((c, -sim[r, c], r))
        r, c = r[order], c[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r)
        take = rank < kk
        pi.append(r[take] + start)
        pj.append(c[take])
    return np.concatenate(pi).astype(np.int64), np.concatenate(pj).astype(np.int64)


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
    pairs: pd.DataFrame   # i, j, ahash_dist, phash_dist, score, offset, exact, candidate, screened_out, confirmed
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
        both = both.sort_values(["node", "score", "phash_dist"], ascending=[True, False, True], kind="stable",
                                na_position="last")
        return both.drop_duplicates("node").set_index("node")[["ahash_dist", "phash_dist", "score"]]


def _params(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    if mode not in MODES:
        raise ConfigError(f"dedup mode {mode!r} is unknown; valid: {', '.join(MODES)}")
    p = {**PAPER_DEFAULTS, **VERIFIED_DEFAULTS, **SEARCH_DEFAULTS}
    p.update({k: v for k, v in params.items() if v is not None and k in p})
    ann.check_search(p["search"])
    return p


def candidate_pairs(f: Features, mode: str, p: dict[str, Any], other: Features | None = None) -> pd.DataFrame:
    """Candidate pairs of the mode (within f, or f x other), byte-identical copies flagged `exact`:
    paper mode, the hash rule (AHash < ahash_threshold and PHash < phash_threshold); verified mode,
    the `knn` nearest neighbours in the shift-robust embedding (both directions across two sets).
    `p["search"]` picks the engine: "exact" (default) or "faiss" (`wbc.ann`, same pairs for the hash
    rule, approximate k-NN)."""
    indexed = p.get("search", "exact") == "faiss"
    if mode == "paper":
        for x in (f, other):
            if x is not None:
                x.fill_paper(sharp=False)
        b_a, b_p = (None, None) if other is None else (other.ahash, other.phash)
        search = functools.partial(ann.hamming_pairs_mih, workers=n_workers(f.workers)) if indexed else hamming_pairs
        i, j = search(f.ahash, int(p["ahash_threshold"]), b_a, a2=f.phash, below2=int(p["phash_threshold"]), b2=b_p)
    else:
        f.require_verify()
        knn = ann.knn_pairs_indexed if indexed else knn_pairs
        if other is None:
            i, j = knn(standardise(f.embed), int(p["knn"]))
        else:
            other.require_verify()
            ref = (f.embed, other.embed)
            i, j = knn(standardise(f.embed, ref), int(p["knn"]), standardise(other.embed, ref))
    ei, ej = exact_pairs(f.sha256, None if other is None else other.sha256)
    cand = pd.DataFrame({"i": i, "j": j, "candidate": True})
    exact = pd.DataFrame({"i": ei, "j": ej, "exact": True})
    df = cand.merge(exact, on=["i", "j"], how="outer")
    df["candidate"] = df["candidate"].fillna(False).astype(bool)
    df["exact"] = df["exact"].fillna(False).astype(bool)
    return df.sort_values(["i", "j"], kind="stable").reset_index(drop=True)


def _scores(fa: Features, ii: np.ndarray, jj: np.ndarray, fb: Features | None, centre: float,
            half: bool) -> tuple[np.ndarray, np.ndarray]:
    """verify_pairs on the rows the pairs use (full-size thumbnails, or half-size when `half`)."""
    name = "coarse" if half else "thumbs"
    if fb is None:  # one set: the spectra of every row used, once
        used = np.unique(np.concatenate([ii, jj]))
        th = getattr(fa, name)[used]
        sp = spectra(th)
        args = (sp, th, np.searchsorted(used, ii), np.searchsorted(used, jj), sp, th, centre)
    else:
        ua, ub = np.unique(ii), np.unique(jj)
        ta, tb = getattr(fa, name)[ua], getattr(fb, name)[ub]
        args = (spectra(ta), ta, np.searchsorted(ua, ii), np.searchsorted(ub, jj), spectra(tb), tb, centre)
    return _parallel_verify(args, fa.workers)


_SHARED: tuple = ()


def _verify_chunk(bounds: tuple[int, int], forked: bool = True) -> tuple[np.ndarray, np.ndarray]:
    global _FFT_WORKERS
    if forked:  # one process per core already: no FFT threads (and none inherited from the parent)
        _FFT_WORKERS = 1
    spec_a, ta, i, j, spec_b, tb, centre = _SHARED
    lo, hi = bounds
    return verify_pairs(spec_a, ta, i[lo:hi], j[lo:hi], spec_b, tb, centre=centre)


def _parallel_verify(args: tuple, workers: int, min_pairs: int = 4096) -> tuple[np.ndarray, np.ndarray]:
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


def confirm(f: Features, df: pd.DataFrame, mode: str, p: dict[str, Any], other: Features | None = None) -> pd.DataFrame:
    """Score and confirm candidate pairs: exact copies always; paper mode every candidate; verified
    mode candidates with verification score >= verify_threshold whose centred cells coincide
    (offset <= max_offset).

    Verified mode screens every candidate on half-size thumbnails first: a pair whose coarse score is
    below `screen_threshold` is ruled out (`screened_out`, its `score` is the coarse one); the others get
    the full-size verification. Paper mode reports the full-size `score`/`offset` when verification
    features exist (NaN otherwise).
    """
    ii, jj = df["i"].to_numpy(np.int64), df["j"].to_numpy(np.int64)
    n = len(df)
    score = np.full(n, np.nan)
    offset = np.full(n, np.nan)
    screened_out = np.zeros(n, bool)
    centre = float(p["centre"])
    if n and mode == "verified":
        s1, o1 = _scores(f, ii, jj, other, centre, half=True)
        screened_out = s1 < float(p["screen_threshold"])
        score, offset = s1.astype(np.float64), o1.astype(np.float64)
        keep = np.flatnonzero(~screened_out)
        if len(keep):
            s2, o2 = _scores(f, ii[keep], jj[keep], other, centre, half=False)
            score[keep], offset[keep] = s2, o2
    elif n and f.has_verify and (other is None or other.has_verify):
        score, offset = (x.astype(np.float64) for x in _scores(f, ii, jj, other, centre, half=False))
    df = df.assign(score=np.round(score, 4), offset=np.round(offset, 4), screened_out=screened_out)
    if mode == "paper":
        df["confirmed"] = df["candidate"] | df["exact"]
    else:
        same = (df["score"] >= float(p["verify_threshold"])) & (df["offset"] <= float(p["max_offset"]))
        df["confirmed"] = df["exact"] | (df["candidate"] & ~df["screened_out"] & same)
    return df


def _hash_distances(df: pd.DataFrame, f: Features, other: Features | None = None) -> pd.DataFrame:
    """AHash/PHash distances of the pairs, after computing the paper features of every image in a
    confirmed pair; <NA> for pairs whose images have none (unconfirmed verified-mode candidates)."""
    fb = f if other is None else other
    c = df[df["confirmed"]]
    f.fill_paper(c["i"].to_numpy() if other is not None else np.concatenate([c["i"], c["j"]]))
    if other is not None:
        other.fill_paper(c["j"].to_numpy())
    ii, jj = df["i"].to_numpy(np.int64), df["j"].to_numpy(np.int64)
    known = f.has_paper[ii] & fb.has_paper[jj]
    dist = lambda a, b: pd.Series(popcount64(a[ii] ^ b[jj]).astype(np.int64), index=df.index).where(known).astype("Int64")  # noqa: E731
    return df.assign(ahash_dist=dist(f.ahash, fb.ahash), phash_dist=dist(f.phash, fb.phash))


PAIR_COLUMNS = ["i", "j", "ahash_dist", "phash_dist", "score", "offset", "exact", "candidate", "screened_out",
                "confirmed"]


def find_groups(features: Features, mode: str = "verified", **params: Any) -> GroupResult:
    """Duplicate groups among the Features rows (see the module docstring). Computes the paper features
    (sharpness: the kept image; hash distances) of the images in groups when they are missing."""
    p = _params(mode, params)
    df = confirm(features, candidate_pairs(features, mode, p), mode, p)
    c = df[df["confirmed"]]
    comp = components(len(features), c["i"].to_numpy(), c["j"].to_numpy())
    features.fill_paper(np.flatnonzero(np.bincount(comp)[comp] > 1))  # sharpness decides within groups
    df = _hash_distances(df, features)
    keep = choose_kept(comp, features.sharpness, features.keys)
    return GroupResult(mode, comp, keep, df[PAIR_COLUMNS], p)


#: Why a member of a group is not kept (`Resolution.reason`).
DUPLICATE = "duplicate"            # a less sharp copy of the kept image (or of a kept same-label image)
LABEL_CONFLICT = "label conflict"  # on_conflict=drop: every member of a group with different labels
MINORITY_LABEL = "minority label"  # on_conflict=majority: its label is not the group's majority label
LABEL_TIE = "label tie"            # on_conflict=majority: no label has a strict majority -> group dropped
CONFLICT_RULES = ("drop", "majority")


@dataclass(frozen=True)
class Resolution:
    """Per image (rows of the GroupResult): kept or not, conflict-group member, winning label, reason."""

    keep: np.ndarray      # bool
    conflict: np.ndarray  # bool: member of a group whose members carry different labels
    winner: np.ndarray    # object: the majority label that won its conflict group ("" elsewhere)
    reason: np.ndarray    # object: why the image is dropped (DUPLICATE, LABEL_CONFLICT, ...; "" when kept)


def resolve_conflicts(result: GroupResult, labels: Sequence[str], sharp: np.ndarray, keys: Sequence[Any],
                      on_conflict: str = "drop") -> Resolution:
    """Apply the label-conflict rule to groups whose members carry different labels.

    Groups with one label keep their sharpest image (`result.keep`), the others are DUPLICATE.
    In a conflict group, on_conflict="drop" drops every member (LABEL_CONFLICT); "majority" keeps the
    sharpest member carrying the label held by strictly more members than any other (ties in sharpness:
    the smallest key): the other members with that label are DUPLICATE, the rest MINORITY_LABEL. When
    two labels share the highest count the group is undecidable and every member is dropped (LABEL_TIE).
    """
    if on_conflict not in CONFLICT_RULES:
        raise ConfigError(f"dedup on_conflict {on_conflict!r} is unknown; valid: {', '.join(CONFLICT_RULES)}")
    labels = np.asarray(labels, dtype=object)
    keep = result.keep.copy()
    reason = np.where(keep | (result.group_sizes() < 2), "", DUPLICATE).astype(object)
    conflict = np.zeros(len(keep), bool)
    winner = np.full(len(keep), "", dtype=object)
    nlab = pd.DataFrame({"g": result.group, "label": labels}).groupby("g")["label"].nunique()
    for g in nlab.index[nlab > 1]:
        members = np.flatnonzero(result.group == g)
        conflict[members], keep[members] = True, False
        if on_conflict == "drop":
            reason[members] = LABEL_CONFLICT
            continue
        counts = pd.Series(labels[members]).value_counts()
        if counts.iloc[0] == counts.iloc[1]:
            reason[members] = LABEL_TIE
            continue
        maj = counts.index[0]
        winner[members] = maj
        reason[members] = np.where(labels[members] == maj, DUPLICATE, MINORITY_LABEL)
        best = min((m for m in members if labels[m] == maj), key=lambda m: (-float(sharp[m]), str(keys[m])))
        keep[best], reason[best] = True, ""
    return Resolution(keep, conflict, winner, reason)


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
        feats[name] = v if isinstance(v, Features) else hash_images(v[0], v[1], workers, desc=f"features {name}",
                                                                   parts=PARTS[mode])
    rows = []
    names = sorted(feats)
    for x, a in enumerate(names):
        for b in names[x + 1:]:
            fa, fb = feats[a], feats[b]
            if not len(fa) or not len(fb):
                continue
            df = _hash_distances(confirm(fa, candidate_pairs(fa, mode, p, fb), mode, p, fb), fa, fb)
            df = df[df["confirmed"]]
            rows.append(pd.DataFrame({
                "set_a": a, "id_a": [fa.keys[i] for i in df["i"]], "set_b": b, "id_b": [fb.keys[j] for j in df["j"]],
                "ahash_dist": df["ahash_dist"].to_numpy(), "phash_dist": df["phash_dist"].to_numpy(),
                "score": df["score"].to_numpy()}))
    cols = ["set_a", "id_a", "set_b", "id_b", "ahash_dist", "phash_dist", "score"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.concat(rows, ignore_index=True)[cols].sort_values(cols[:4], kind="stable").reset_index(drop=True)
