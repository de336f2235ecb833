"""Worker processes: how many to start (shared by the stages that fork workers)."""
from __future__ import annotations

import os


def n_workers(workers: int) -> int:
    """`workers` when positive; 0 (or None) = all cores available to this process."""
    if workers and workers > 0:
        return int(workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1
