"""Indexed candidate search for dedup at scale (millions of images): the same candidates as the exact
search of `wbc.dedup.candidates`, in far less than its O(N^2) time.

  - embedding k-NN (verified mode): a FAISS inverted-file index (~sqrt(N) lists, NPROBE visited)
    over 4-bit fast-scan product-quantised codes with one sub-quantizer per dimension, the K_FACTOR x k
    best re-ranked on half-precision copies of the vectors (inner product on the L2-normalised
    embedding = cosine). Measured at 1M (reports/dedup/scaling.md): the recall is limited by the code's
    precision, not by the lists visited; 2-3 dimensions per sub-quantizer needed K_FACTOR 32 (and
    twice the time) for recall@12 0.99, one per dimension gets it with K_FACTOR 8; an 8-bit scalar
    re-ranking lost 3 points of recall, float16 none. Built and queried in row blocks, each block's
    pages released, so the embedding can stay in an `np.memmap` on disk: memory = the index (N x
    (d/2 + 2d) bytes) + one block. Approximate: recall@k against exact search is measured by
    `benchmarks/dedup_scale_bench.py`.
  - the paper's Hamming rule (paper mode): multi-index hashing (Norouzi et al., CVPR 2012) on the
    64-bit AHash, then the full rule (AHash < a, PHash < b) on every candidate. The 64 bits are cut
    into m substrings with radii t_i, sum(t_i + 1) > r = a - 1: by the pigeonhole principle every pair
    within r differs by <= t_i bits on some substring i, so enumerating those flips is EXACT (same
    pairs as `wbc.dedup.candidates.hamming_pairs`). Lookups use dense bucket tables (2^w entries per substring)
    and are vectorised over all queries per flip mask; masks are spread over forked workers.

FAISS is imported lazily: it is needed only when `dedup.search: faiss`.
"""
from __future__ import annotations

import itertools
import math
import multiprocessing as mp
from typing import Any

import numpy as np

from wbc.core.errors import ConfigError
from wbc.dedup.spill import release_pages

#: Search engines of `dedup.search`.
SEARCHES = ("exact", "faiss")
#: IVF defaults: nlist = NLIST_PER_SQRT * sqrt(N) lists, nprobe lists visited per query.
NLIST_PER_SQRT = 1.0
NPROBE = 16
#: Lists visited by the zoomed-in embeddings' queries (`knn_zoom`): a zoomed copy is a close neighbour,
#: found in the nearest lists; half the scan keeps the 1M search within its 3-minute budget.
ZOOM_NPROBE = 8
#: At most this many PQ sub-quantizers (one per dimension below it).
MAX_PQ_M = 256
#: Re-ranking: the K_FACTOR * k best by PQ code are re-scored on the exact vectors.
K_FACTOR = 8
#: Below this many database rows the IVF index is not worth it: FAISS flat (exact) search instead.
MIN_IVF_ROWS = 20_000
#: Substring widths of the multi-index hashing are capped (dense tables of 2^w int32 entries).
MAX_WIDTH = 24


def _faiss() -> Any:
    """The faiss module (optional dependency: faiss-cpu)."""
    try:
        import faiss  # lazy: optional dependency (faiss-cpu), only the indexed search needs it
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("dedup search 'faiss' needs the faiss-cpu package (pip install -r requirements.txt)") from exc
    return faiss


def check_search(search: str) -> str:
    """The validated `dedup.search` value."""
    if search not in SEARCHES:
        raise ConfigError(f"dedup search {search!r} is unknown; valid: {', '.join(SEARCHES)}")
    return search


# --------------------------------------------------------------------------- embedding k-NN


def index_spec(n: int, d: int, nlist: int | None = None) -> str:
    """FAISS index_factory spec: IVF (nlist ~ sqrt(N) lists) over 4-bit fast-scan PQ codes (M = the
    largest divisor of d up to MAX_PQ_M: one dimension per sub-quantizer for d <= MAX_PQ_M), re-ranked
    on float16 copies of the vectors (Refine(SQfp16))."""
    nlist = nlist or max(1, int(NLIST_PER_SQRT * math.sqrt(n)))
    m = max(x for x in range(1, min(d, MAX_PQ_M) + 1) if d % x == 0)
    return f"IVF{nlist},PQ{m}x4fs,Refine(SQfp16)"


def build_ivf(emb: np.ndarray, nlist: int | None = None, block: int = 65536, train_rows: int = 100_000,
              seed: int = 0) -> Any:
    """An inner-product FAISS index over the rows of `emb` (array or memmap), added in blocks.

    `index_spec` (IVF, fast-scan PQ, exact re-ranking) trained on a seeded sample of at most
    `train_rows` rows; a flat (exact) index below MIN_IVF_ROWS rows when `nlist` is not given.
    """
    faiss = _faiss()
    n, d = emb.shape
    if n < MIN_IVF_ROWS and nlist is None:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.index_factory(d, index_spec(n, d, nlist), faiss.METRIC_INNER_PRODUCT)
        rows = np.sort(np.random.default_rng(seed).choice(n, min(n, train_rows), replace=False))
        sample = np.ascontiguousarray(emb[rows], dtype=np.float32)
        release_pages(emb)
        index.train(sample)
        del sample
    for start in range(0, n, block):
        index.add(np.ascontiguousarray(emb[start:start + block], dtype=np.float32))
        release_pages(emb)
    return index


def search_knn(index: Any, queries: np.ndarray, k: int, nprobe: int = NPROBE, block: int = 8192,
               ) -> np.ndarray:
    """Row ids (int64, (len(queries), k); -1 where fewer were found) of each query's k best rows.

    Queries go in blocks of `block`: the fast-scan search builds a float look-up table of
    d x 16 entries per query (~10 kB at d = 153), 640 MB for a block of 65,536 queries."""
    if not isinstance(index, _faiss().IndexFlat):
        _faiss().ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        index.k_factor = K_FACTOR
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), block):
        _, ids = index.search(np.ascontiguousarray(queries[start:start + block], dtype=np.float32), k)
        release_pages(queries)
        out[start:start + len(ids)] = ids
    return out


def _neighbour_pairs(ids: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) for the first k valid neighbours j of each row i (self dropped when `exclude_self`)."""
    rows = np.repeat(np.arange(len(ids)), ids.shape[1]).reshape(ids.shape)
    valid = ids >= 0
    if exclude_self:
        valid &= ids != rows
    rank = np.cumsum(valid, axis=1)
    take = valid & (rank <= k)
    return rows[take].astype(np.int64), ids[take].astype(np.int64)


def knn_pairs_indexed(emb: np.ndarray, k: int, emb_b: np.ndarray | None = None, *, nlist: int | None = None,
                      nprobe: int = NPROBE, threads: int = 0, zoomed: np.ndarray | None = None,
                      zoomed_b: np.ndarray | None = None, kz: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`wbc.dedup.candidates.knn_pairs` through a FAISS index: within `emb` pairs i < j (deduplicated), across
    two sets neighbours in both directions; with `zoomed` and `kz` > 0 the zoomed-in embeddings query the
    same index (built once per set). Embeddings must be L2-normalised (`dedup.standardise`)."""
    if k <= 0 or len(emb) == 0 or (emb_b is not None and len(emb_b) == 0):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if threads > 0:
        _faiss().omp_set_num_threads(threads)
    if emb_b is None and min(k, len(emb) - 1) <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    indexes = (build_ivf(emb, nlist), None if emb_b is None else build_ivf(emb_b, nlist))
    i, j = _indexed_neighbours(emb, emb_b, indexes, k, nprobe)
    if zoomed is not None and kz > 0:
        zi, zj = _indexed_neighbours(zoomed, zoomed_b, indexes, kz, min(nprobe, ZOOM_NPROBE))
        i, j = np.concatenate([i, zi]), np.concatenate([j, zj])
    return _unique(np.minimum(i, j), np.maximum(i, j)) if emb_b is None else _unique(i, j)


def _indexed_neighbours(queries_a: np.ndarray, queries_b: np.ndarray | None, indexes: tuple[Any, Any], k: int,
                        nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the k nearest through the built indexes (index_a, index_b): within one set (index_b None)
    each row of `queries_a` in index_a, its own row excluded; across two, `queries_a` in index_b and
    `queries_b` in index_a."""
    index_a, index_b = indexes
    if index_b is None:
        kk = min(k, index_a.ntotal - 1)
        return _neighbour_pairs(search_knn(index_a, queries_a, kk + 1, nprobe), kk, exclude_self=True)
    i, j = _neighbour_pairs(search_knn(index_b, queries_a, min(k, index_b.ntotal), nprobe), k, False)
    bj, bi = _neighbour_pairs(search_knn(index_a, queries_b, min(k, index_a.ntotal), nprobe), k, False)
    return np.concatenate([i, bi]), np.concatenate([j, bj])


def _unique(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique int64 pairs (one int64 key per pair: a 1-d sort, no (n, 2) copies)."""
    if len(i) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    width = int(j.max()) + 1
    keys = np.unique(i * width + j)
    return keys // width, keys % width


# --------------------------------------------------------------------------- Hamming rule (MIH)


def substrings(radius: int, n_rows: int, bits: int = 64) -> list[tuple[int, int, int]]:
    """(shift, width, flip radius) of each probed substring: m ~ bits / log2(N) substrings (widths <=
    MAX_WIDTH), radii t_i with sum(t_i + 1) = radius + 1 (pigeonhole: exact), the larger radii on the
    narrower substrings."""
    m = max(1, round(bits / max(1.0, math.log2(max(n_rows, 2)))), math.ceil(bits / MAX_WIDTH))
    m = max(min(m, radius + 1), math.ceil(bits / MAX_WIDTH))
    widths = [bits // m + (1 if x < bits % m else 0) for x in range(m)][::-1]   # ascending
    q, rem = divmod(radius + 1, m)
    radii = [q - 1 + (1 if x < rem else 0) for x in range(m)]                   # descending
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    # a radius of -1 (more substrings than radius + 1, for narrow tables) is not probed at all
    return [(int(s), int(w), int(t)) for s, w, t in zip(shifts, widths, radii) if t >= 0]


def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit mask with at most `radius` bits set (uint32)."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in c) for c in itertools.combinations(range(width), r)]
    return np.array(masks, np.uint32)


class _Table:
    """Dense bucket table of one substring: rows sorted by key, start and count per key, and the
    second-rule codes in that order (candidates are read at their sorted position)."""

    def __init__(self, codes: np.ndarray, shift: int, width: int):
        self.shift, self.width = shift, width
        keys = self.key(codes)
        self.order = np.argsort(keys, kind="stable")
        self.counts = np.bincount(keys, minlength=1 << width).astype(np.int32)
        self.starts = (np.cumsum(self.counts) - self.counts).astype(np.int64)
        self.codes = codes[self.order]

    def key(self, codes: np.ndarray) -> np.ndarray:
        return ((codes >> np.uint64(self.shift)) & np.uint64((1 << self.width) - 1)).astype(np.uint32)


_MIH: dict[str, Any] = {}


def _mask_groups(width: int, radius: int, self_join: bool) -> list[tuple[int, np.ndarray]]:
    """Flip masks grouped by their highest set bit h (-1: the zero mask; everything in one group
    across two sets). Within one set a mask f != 0 only probes from queries whose key has bit h = 0:
    each pair of buckets (k, k ^ f) is then visited once, not twice."""
    masks = flip_masks(width, radius)
    if not self_join:
        return [(-1, masks)]
    top = np.where(masks > 0, np.floor(np.log2(np.maximum(masks, 1))).astype(int), -1)
    return [(int(h), masks[top == h]) for h in np.unique(top)]


def _probe(task: tuple[int, int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) passing the full rule among the rows j whose substring `t` equals query i's XOR a
    mask of `masks` (queries restricted to key bit `h` = 0 within one set, see _mask_groups)."""
    t, h, masks = task
    g = _MIH
    table, qkeys = g["tables"][t], g["qkeys"][t]
    qidx = np.arange(len(qkeys)) if h < 0 else np.flatnonzero((qkeys >> np.uint32(h)) & np.uint32(1) == 0)
    qkeys, qa = qkeys[qidx], g["a"][qidx]
    out_i, out_j = [], []
    for f in masks:
        qk = qkeys ^ f
        cnt = table.counts[qk]
        nz = np.flatnonzero(cnt)
        if not len(nz):
            continue
        c = cnt[nz]
        ends = np.cumsum(c)
        pos = np.arange(ends[-1]) - np.repeat(ends - c - table.starts[qk[nz]], c)
        hit = np.flatnonzero(np.bitwise_count(np.repeat(qa[nz], c) ^ table.codes[pos]) < g["below"])
        if not len(hit):
            continue
        ii = qidx[nz[np.searchsorted(ends, hit, side="right")]].astype(np.int64)
        jj = table.order[pos[hit]].astype(np.int64)
        if g["a2"] is not None:
            keep = np.bitwise_count(g["a2"][ii] ^ g["b2"][jj]) < g["below2"]
            ii, jj = ii[keep], jj[keep]
        if g["self"]:
            ii, jj = np.minimum(ii, jj), np.maximum(ii, jj)
            keep = ii < jj
            ii, jj = ii[keep], jj[keep]
        out_i.append(ii)
        out_j.append(jj)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(out_i), cat(out_j)


def hamming_pairs_mih(a: np.ndarray, below: int, b: np.ndarray | None = None, *, a2: np.ndarray | None = None,
                      below2: int | None = None, b2: np.ndarray | None = None, workers: int = 1,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """`wbc.dedup.candidates.hamming_pairs` (same pairs, same order) by multi-index hashing on the first code.

    All (i, j) with popcount(a[i] ^ b[j]) < below (and a2/b2 distance < below2); within `a` (no `b`)
    i < j. `workers` forked processes share the flip masks.
    """
    global _MIH
    self_join = b is None
    b, b2 = (a, a2) if self_join else (b, b2)
    if below <= 0 or not len(a) or not len(b):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    subs = substrings(below - 1, len(b))
    tables = [_Table(b, s, w) for s, w, _ in subs]
    tasks = [(x, h, chunk) for x, (_, w, t) in enumerate(subs) for h, group in _mask_groups(w, t, self_join)
             for chunk in np.array_split(group, max(1, len(group) // 64))]
    tasks.sort(key=lambda task: -len(task[2]))  # largest first: the workers finish together
    _MIH = {"tables": tables, "qkeys": [tb.key(a) for tb in tables], "self": self_join, "a": a, "b": b,
            "a2": None if a2 is None else np.asarray(a2, np.uint64), "b2": None if b2 is None else np.asarray(b2, np.uint64),
            "below": below, "below2": below2}
    try:
        if workers > 1 and "fork" in mp.get_all_start_methods():
            with mp.get_context("fork").Pool(workers) as pool:
                parts = list(pool.imap_unordered(_probe, tasks, chunksize=1))
        else:
            parts = [_probe(task) for task in tasks]
    finally:
        _MIH = {}
    return _unique(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
