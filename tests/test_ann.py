"""wbc.dedup.index: indexed candidate search (multi-index hashing, FAISS k-NN) against the exact search."""
from __future__ import annotations

import numpy as np
import pytest

from wbc.dedup import index as ann
from wbc.dedup.candidates import hamming_pairs, knn_pairs
from wbc.dedup.fingerprints import standardise
from wbc.dedup.groups import _params
from wbc.core.errors import ConfigError

pytest.importorskip("faiss")


def planted_codes(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform 64-bit AHash/PHash codes; m rows are copies of others with <= 10 / <= 13 bits flipped."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    p = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    rows = rng.permutation(n)[: 2 * m].reshape(m, 2)
    for (s, d) in rows:
        a[d] = a[s] ^ _mask(rng, rng.integers(0, 11))
        p[d] = p[s] ^ _mask(rng, rng.integers(0, 14))
    return a, p, rows


def _mask(rng: np.random.Generator, bits: int) -> np.uint64:
    return np.uint64(sum(1 << int(b) for b in rng.choice(64, bits, replace=False)))


def planted_embedding(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered 153-d embeddings (standardised like dedup's); m rows are near-copies of others."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, 153))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, 153))
    rows = rng.permutation(n)[: 2 * m].reshape(m, 2)
    x[rows[:, 1]] = x[rows[:, 0]] + 0.01 * rng.normal(size=(m, 153))
    return standardise(x.astype(np.float32)), rows


def pairs_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))


@pytest.mark.parametrize("workers", [1, 2])
def test_mih_equals_exact_hamming_rule_and_finds_planted_pairs(workers: int) -> None:
    a, p, rows = planted_codes(4000, 200)
    exact = hamming_pairs(a, 11, a2=p, below2=14)
    got = ann.hamming_pairs_mih(a, 11, a2=p, below2=14, workers=workers)
    assert np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])
    assert pairs_set(rows[:, 0], rows[:, 1]) <= pairs_set(*got)


def test_mih_across_two_sets_and_one_code() -> None:
    a, p, _ = planted_codes(3000, 300, seed=1)
    b, b2 = a[:500] ^ np.uint64(0b101), p[:500]
    exact = hamming_pairs(a, 11, b, a2=p, below2=14, b2=b2)
    got = ann.hamming_pairs_mih(a, 11, b, a2=p, below2=14, b2=b2)
    assert len(exact[0]) >= 500 and np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])
    for below in (15, 1):   # one code, a wider radius (more substrings); radius 0 (identical codes)
        exact = hamming_pairs(a, below)
        got = ann.hamming_pairs_mih(a, below)
        assert np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])


def test_substrings_cover_the_bits_and_the_radius() -> None:
    for radius, n in [(10, 10_000), (10, 1_000_000), (13, 100), (0, 50)]:
        subs = ann.substrings(radius, n)
        assert sum(w for _, w, _ in subs) <= 64 and all(w <= ann.MAX_WIDTH for _, w, _ in subs)
        assert sum(t + 1 for _, _, t in subs) == radius + 1   # pigeonhole: exact
    assert len(ann.flip_masks(10, 2)) == 1 + 10 + 45


def test_knn_flat_path_equals_exact_search() -> None:
    x, _ = planted_embedding(1500, 50)
    exact, got = knn_pairs(x, 12), ann.knn_pairs_indexed(x, 12)
    assert np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])
    y = x[:300] + 0.001
    exact, got = knn_pairs(x, 5, y), ann.knn_pairs_indexed(x, 5, y)
    assert np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])


def test_knn_zoomed_queries_flat_path_equal_exact_and_ivf_recall() -> None:
    x, _ = planted_embedding(1500, 50)
    z, _ = planted_embedding(1500, 50, seed=3)  # another embedding of the same rows (the zoomed-in views)
    exact, got = knn_pairs(x, 6, zoomed=z, kz=4), ann.knn_pairs_indexed(x, 6, zoomed=z, kz=4)
    assert np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])
    assert len(exact[0]) > len(knn_pairs(x, 6)[0])  # the zoomed queries add pairs
    y, zy = x[:300] + 0.001, z[:300] + 0.001
    exact = knn_pairs(x, 3, y, zoomed=z, zoomed_b=zy, kz=2)
    got = ann.knn_pairs_indexed(x, 3, y, zoomed=z, zoomed_b=zy, kz=2)
    assert np.array_equal(exact[0], got[0]) and np.array_equal(exact[1], got[1])
    big, _ = planted_embedding(6000, 300)
    bz, _ = planted_embedding(6000, 300, seed=5)
    exact = pairs_set(*knn_pairs(big, 12, zoomed=bz, kz=8))
    got = pairs_set(*ann.knn_pairs_indexed(big, 12, nlist=64, zoomed=bz, kz=8))  # forced IVF
    assert len(exact & got) / len(exact) >= 0.97


def test_knn_ivf_index_finds_planted_pairs_at_high_recall() -> None:
    x, rows = planted_embedding(6000, 300)
    exact = pairs_set(*knn_pairs(x, 12))
    got = pairs_set(*ann.knn_pairs_indexed(x, 12, nlist=64))  # forced IVF (not the small-N flat path)
    recall = len(exact & got) / len(exact)
    print(f"IVF k-NN pair recall vs exact: {recall:.4f}")
    assert recall >= 0.97
    assert pairs_set(rows[:, 0], rows[:, 1]) <= got


def test_search_param_is_checked() -> None:
    assert _params("paper", {"search": "faiss"})["search"] == "faiss"
    assert _params("verified", {})["search"] == "exact"
    with pytest.raises(ConfigError, match="search"):
        _params("verified", {"search": "annoy"})


def test_knn_ivf_on_a_spilled_memmap_equals_the_in_memory_search(tmp_path) -> None:
    """The embedding can stay on disk: the index built and queried block by block from a memory map
    (pages released after each block) returns the in-memory search's pairs; released pages read back."""
    from wbc.dedup import spill

    x, _ = planted_embedding(3000, 100, seed=2)
    mm = spill.zeros(tmp_path, "emb", x.shape, np.float32)
    mm[:] = x
    spill.release_pages(mm)  # written back, then dropped from this process: the data survives
    np.testing.assert_array_equal(mm, x)
    assert not list(tmp_path.iterdir())  # unlinked scratch file
    small = dict(nlist=16)
    a = ann.knn_pairs_indexed(x, 8, **small)
    b = ann.knn_pairs_indexed(mm, 8, **small)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    spill.release_pages(x)  # an in-memory array: nothing to do
