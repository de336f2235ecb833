"""Arrays spilled to disk: memory-mapped scratch files whose pages the process hands back.

A million images' features (thumbnails, embeddings) or vectors do not fit comfortably in RAM; kept
in a memory-mapped file they live in the page cache, which the kernel can reclaim, and the process
holds only the pages it touches between two `release_pages` calls. Used by `wbc.dedup.fingerprints.hash_images`
(features written chunk by chunk) and `wbc.dedup.index` (vectors read block by block).
"""
from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def zeros(folder: str | Path, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zero-filled array of `shape` in a memory-mapped scratch file in `folder`; the file is
    unlinked at once where the system allows it (POSIX: it lives as long as the mapping)."""
    if not int(np.prod(shape)):
        return np.zeros(shape, dtype)
    fd, path = tempfile.mkstemp(dir=folder, prefix=f"wbc-{name}-", suffix=".bin")
    os.close(fd)
    arr = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
    try:
        os.unlink(path)
    except OSError:  # pragma: no cover - Windows keeps mapped files: the temporary folder's cleaner does
        pass
    return arr


def release_pages(arr: np.ndarray) -> None:
    """Hand the resident pages of a memory-mapped array (or a view of one) back to the page cache,
    written back first: the process's memory then holds only what it touches next. A no-op for an
    in-memory array."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if getattr(arr, "mode", "r") != "r":
        mm.flush()
    mm.madvise(mmap.MADV_DONTNEED)
