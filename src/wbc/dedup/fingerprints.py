"""Per-image dedup fingerprints: the paper's AHash/PHash and sharpness (full decode), and the verified
mode's sha256, zoomed grey thumbnails and shift-robust embedding (reduced decode), computed over
worker processes with bounded memory (`hash_images`)."""
from __future__ import annotations

import functools
import hashlib
import multiprocessing as mp
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import imagehash
import numpy as np
import scipy.fft
from PIL import Image
from tqdm import tqdm

from wbc.core.errors import ConfigError
from wbc.core.parallel import n_workers
from wbc.data.store import decode_image
from wbc.dedup import spill

#: Thumbnail side used for verification (pixels); the coarse screening pass uses half of it.
THUMB = 64
COARSE = THUMB // 2
#: Zoom factors precomputed per image (zoom-in about the centre); 1/z is covered by swapping roles.
ZOOMS = (1.0, 1.05, 1.10)
#: Embedding: low-frequency window of the Fourier magnitude (|ky| <= EMB_K, 0 <= kx <= EMB_K).
EMB_K = 8
EMB_DIM = (2 * EMB_K + 1) * (EMB_K + 1)
#: Magnification of the second, zoomed-in embedding (`Features.embed_zoomed`): a copy imaged at a
#: higher magnification looks like this image zoomed in, which the plain embedding misses beyond ~7 %.
EMB_ZOOM = 1.10
#: Images read and decoded per chunk: bounds the bytes in flight (a Pool's imap would read the whole
#: input ahead of the workers).
CHUNK = 4096
#: From this many images on, the per-image arrays of `hash_images` are spilled to disk.
SPILL_ROWS = 200_000
#: Feature parts each mode computes for every image ("paper" = hashes + sharpness, "verify" = thumbnails).
PARTS = {"paper": ("paper",), "verified": ("verify",)}


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
    embed_zoomed: np.ndarray  # float32 (N, EMB_DIM): the same of the field zoomed in by EMB_ZOOM
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


def _fourier_embedding(sat: np.ndarray) -> np.ndarray:
    """Square-root Fourier magnitude of the windowed (THUMB x THUMB) image at low frequencies."""
    mag = np.abs(scipy.fft.rfft2((sat - sat.mean()) * _hann(THUMB)))
    low = np.concatenate([mag[: EMB_K + 1, : EMB_K + 1], mag[-EMB_K:, : EMB_K + 1]], axis=0)
    return np.sqrt(low).ravel().astype(np.float32)


def _embeddings(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift-robust embeddings of the saturation thumbnail: plain, and zoomed in by EMB_ZOOM about the
    centre (translation changes only the phase of the Fourier transform; a zoom of up to ~7 % barely
    moves its low frequencies, a larger one is matched by the zoomed embedding). The zoomed thumbnail
    is resampled from the plain one: the low frequencies kept need no more resolution."""
    small = cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    c = (THUMB - 1) / 2.0
    m = np.array([[EMB_ZOOM, 0, c - EMB_ZOOM * c], [0, EMB_ZOOM, c - EMB_ZOOM * c]], np.float64)
    zoomed = cv2.warpAffine(sat, m, (THUMB, THUMB), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _fourier_embedding(sat), _fourier_embedding(zoomed)


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
    embed, embed_zoomed = _embeddings(np.asarray(img))
    return {"thumbs": thumbs, "coarse": half, "embed": embed, "embed_zoomed": embed_zoomed}


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
    pages are handed back to the page cache after every chunk (`wbc.dedup.spill.release_pages`).
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
              "embed": ((EMB_DIM,), np.float32), "embed_zoomed": ((EMB_DIM,), np.float32)}

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
