"""Duplicates across sets (e.g. split names, sources): the same test as within one set."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd

from wbc.dedup.fingerprints import PARTS, Features, hash_images
from wbc.dedup.groups import _hash_distances, _params, candidate_pairs, confirm


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
