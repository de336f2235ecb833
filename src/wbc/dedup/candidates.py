"""Candidate pairs, exact blocked searches: Hamming distance on packed 64-bit hashes (the paper's
rule), k nearest neighbours by cosine similarity (the verified mode), byte-identical copies."""
from __future__ import annotations

import numpy as np


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


def knn_pairs(emb: np.ndarray, k: int, emb_b: np.ndarray | None = None, block: int = 2048, *,
              zoomed: np.ndarray | None = None, zoomed_b: np.ndarray | None = None,
              kz: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) where j is among the k nearest neighbours of i by cosine similarity (blocked matmul).

    Without `emb_b`: within `emb`, returned with i < j, deduplicated. With `emb_b`: i indexes emb, j emb_b,
    and neighbours are taken in both directions.

    With `zoomed` (and `zoomed_b` across two sets; rows as in emb / emb_b) and `kz` > 0, also the pairs
    of views at different magnifications: each row's zoomed-in embedding queries the plain ones for its
    `kz` nearest (its own row excluded). A copy imaged at a higher magnification looks like the other
    image zoomed in, so whichever of the two is less magnified finds the other.
    """
    if k <= 0 or len(emb) == 0 or (emb_b is not None and len(emb_b) == 0):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = _neighbours(emb, emb_b, emb_b, emb, k, block)
    if zoomed is not None and kz > 0:
        zi, zj = _neighbours(zoomed, emb_b, zoomed_b, emb, kz, block)
        i, j = np.concatenate([i, zi]), np.concatenate([j, zj])
    if emb_b is None:
        i, j = np.minimum(i, j), np.maximum(i, j)
    return _unique_pairs(i, j)


def _neighbours(queries_a: np.ndarray, base_b: np.ndarray | None, queries_b: np.ndarray | None, base_a: np.ndarray,
                k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the k nearest: within one set (`base_b` None) each row of `queries_a` among `base_a`,
    its own row excluded; across two, `queries_a` among `base_b` and `queries_b` among `base_a`."""
    if base_b is None:
        kk = min(k, len(base_a) - 1)
        return _knn_one_way(queries_a, base_a, kk, True, block) if kk > 0 else (np.zeros(0, np.int64),) * 2
    i, j = _knn_one_way(queries_a, base_b, min(k, len(base_b)), False, block)
    bj, bi = _knn_one_way(queries_b, base_a, min(k, len(base_a)), False, block)  # b's rows among a's
    return np.concatenate([i, bi]), np.concatenate([j, bj])


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
