"""The leakage audit: every pair of images across different sets, re-checked with the dedup test."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from wbc.data.store import ImageStore
from wbc.dataset.assign import Assignment, kept_locations
from wbc.dedup.across import cross_duplicates

# --------------------------------------------------------------------------------------------
# Leakage audit
# --------------------------------------------------------------------------------------------


def audit_leakage(
    assignment: Assignment,
    kept: pd.DataFrame,
    store_root: str | Path,
    dedup_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Confirmed duplicate pairs across different sets (`wbc.dedup.across.cross_duplicates`)."""
    return cross_duplicates(loaders_by_set(assignment, kept, store_root), dict(dedup_params or {}))


def loaders_by_set(assignment: Assignment, kept: pd.DataFrame, store_root: str | Path) -> dict[str, Any]:
    """`{set: (load_fn, ids)}` for `cross_duplicates`: load_fn(id) -> the image's stored bytes."""
    store = ImageStore(store_root)
    locs = kept_locations(kept)

    def load(image_id: str) -> bytes:
        return store.read(*locs[image_id])

    frame = assignment.frame
    return {s: (load, frame.loc[frame["split"] == s, "id"].tolist()) for s in assignment.sets}


def summarize_audit(pairs: pd.DataFrame, examples: int = 20) -> dict[str, Any]:
    """Count of cross-set duplicate pairs, per pair of sets, and a few examples."""
    by_sets: dict[str, int] = {}
    for a, b in zip(pairs.get("set_a", []), pairs.get("set_b", [])):
        key = "|".join(sorted((str(a), str(b))))
        by_sets[key] = by_sets.get(key, 0) + 1
    head = pairs.head(examples)
    return {
        "cross_split_duplicates": int(len(pairs)),
        "by_sets": dict(sorted(by_sets.items())),
        "examples": json.loads(head.to_json(orient="records")) if len(head) else [],
    }
