"""Seeding of the synthetic dataset: every picture has its own RNG, seeded from (seed, source, index),
so the bytes do not depend on worker count or order."""
from __future__ import annotations

import zlib

import numpy as np

#: Default seed (the date of the PBC paper).
DEFAULT_SEED = 20200420


def src_code(source: str) -> int:
    """A stable integer for a source id (RNG seeding)."""
    return zlib.crc32(source.encode("utf-8"))


def item_rng(seed: int, source: str, *index: int) -> np.random.Generator:
    """The RNG of one item of a source: (seed, source, index...) -> an independent stream."""
    return np.random.default_rng([int(seed), src_code(source), *[int(i) for i in index]])
