"""Which set each kept image goes to: read the dedup output, size the sets, assign train/val/test.

- `load_kept` reads the dedup output (manifest rows, see docs/design.md).
- `assign_splits` gives every image a set: `train`, `val`, `test` for `pool` sources, and the
  source id for `external` sources (test-only sets kept by name).
  - `stratified`: val/test carved from the merged pool, per-class counts by largest-remainder
    apportionment (exact totals, each class within +-1 of its proportional target), then a
    seeded permutation per class of the id-sorted images.
  - `given`: each source's own split from the registry (`split: train|test|external`); val is
    carved (stratified) from the train part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from wbc import LABELS
from wbc.core.errors import ConfigError, WbcError
from wbc.data.sources import get_source, profile_split

#: The sets made from `pool` sources, in order; external sets (source ids) follow.
POOL_SETS = ("train", "val", "test")
MODES = ("stratified", "given")
#: Columns of data/processed/splits.csv.
SPLIT_COLUMNS = ["id", "source", "label", "split", "index"]
_KEPT_COLUMNS = ("id", "source", "role", "label", "status", "shard", "offset", "length")
#: Default val/test when neither params nor a profile give them.
DEFAULT_FRACTION = 0.15


class SplitError(ConfigError):
    """An impossible split (too few images for the requested val/test sizes, bad sizes, ...)."""


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------

def load_kept(path: str | Path) -> pd.DataFrame:
    """Read the dedup output (manifest rows) and keep the usable rows, sorted by `id`.

    Usable: `status == ok`, a canonical label, and stored bytes (`shard >= 0`). Raises
    `WbcError` on a missing file, missing columns or duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise WbcError(f"kept manifest not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in _KEPT_COLUMNS if c not in df.columns]
    if missing:
        raise WbcError(f"{path}: missing column(s) {', '.join(missing)} (expected the manifest columns)")
    for col in ("shard", "offset", "length"):
        df[col] = pd.to_numeric(df[col].replace("", "-1")).astype("int64")
    usable = (df["status"] == "ok") & df["label"].isin(LABELS) & (df["shard"] >= 0)
    df = df[usable].sort_values("id", kind="stable").reset_index(drop=True)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise WbcError(f"{path}: duplicate id(s), e.g. {dup.iloc[0]!r}")
    return df


def profile_split_defaults(profile: str | None) -> dict[str, Any]:
    """The profile's default `{"val": ..., "test": ...}` (fractions 0.15 when no profile)."""
    if not profile:
        return {"val": DEFAULT_FRACTION, "test": DEFAULT_FRACTION}
    return dict(profile_split(profile))


def source_own_split(source: str) -> str:
    """The registry's `split` key of a source (`train`, `test` or `external`)."""
    own = get_source(source).get("split")
    if own not in ("train", "test", "external"):
        raise ConfigError(f"source {source!r}: registry key `split` must be train, test or external, got {own!r}")
    return own


# --------------------------------------------------------------------------------------------
# Split sizes
# --------------------------------------------------------------------------------------------

def resolve_size(spec: Any, n: int, name: str) -> int:
    """A count (int >= 1, or 0) or a fraction (0 < x < 1 of `n`, rounded half up) -> a count."""
    if isinstance(spec, bool) or spec is None:
        raise SplitError(f"split.{name} must be a count or a fraction, got {spec!r}")
    if isinstance(spec, str):
        try:
            spec = float(spec)
        except ValueError:
            raise SplitError(f"split.{name} must be a count or a fraction, got {spec!r}") from None
    value = float(spec)
    if not math.isfinite(value) or value < 0:
        raise SplitError(f"split.{name} must be >= 0, got {spec!r}")
    if 0 < value < 1:
        return int(math.floor(value * n + 0.5))
    if value != int(value):
        raise SplitError(f"split.{name}: a count must be a whole number, got {spec!r}")
    count = int(value)
    if count > n:
        raise SplitError(f"split.{name} = {count} but only {n} images are available")
    return count


def apportion(counts: Mapping[str, int], total: int) -> dict[str, int]:
    """Largest-remainder apportionment of `total` across classes proportionally to `counts`.

    The result sums to `total` exactly and each class gets floor or ceil of its quota
    `total * n_c / N`. Ties in the remainders go to the larger class, then the label order.
    """
    n = sum(counts.values())
    if total == 0 or n == 0:
        return {k: 0 for k in counts}
    quotas = {k: total * v / n for k, v in counts.items()}
    base = {k: int(math.floor(q)) for k, q in quotas.items()}
    left = total - sum(base.values())
    order = sorted(counts, key=lambda k: (-(quotas[k] - base[k]), -counts[k], _label_order(k)))
    for k in order[:left]:
        base[k] += 1
    return base


def _label_order(label: str) -> int:
    return LABELS.index(label) if label in LABELS else len(LABELS)


def class_targets(class_counts: Mapping[str, int], val: int, test: int) -> tuple[dict[str, int], dict[str, int]]:
    """Per-class val and test counts; each class must keep >= 1 image for train."""
    val_c, test_c = apportion(class_counts, val), apportion(class_counts, test)
    for label, n in class_counts.items():
        if n and val_c[label] + test_c[label] >= n:
            raise SplitError(
                f"class {label!r} has {n} images, too few for val {val_c[label]} + test {test_c[label]} "
                f"(of val {val} / test {test} in total) with at least one left for train"
            )
    return val_c, test_c


# --------------------------------------------------------------------------------------------
# Assignment
# --------------------------------------------------------------------------------------------

def carve(frame: pd.DataFrame, val: int, test: int, seed: int) -> tuple[pd.Series, dict[str, Any]]:
    """Stratified val/test carve of `frame` (id, label): returns the set of each row and targets.

    Per class: ids sorted, a permutation from `default_rng([seed, class index])`; the first
    `val_c` images go to val, the next `test_c` to test, the rest to train.
    """
    class_counts = {lab: int((frame["label"] == lab).sum()) for lab in LABELS}
    val_c, test_c = class_targets(class_counts, val, test)
    sets = pd.Series("train", index=frame.index, dtype=object)
    for li, label in enumerate(LABELS):
        rows = frame.index[frame["label"] == label]
        if not len(rows):
            continue
        rows = rows[np.argsort(frame.loc[rows, "id"].to_numpy(), kind="stable")]
        perm = rows[np.random.default_rng([seed, li]).permutation(len(rows))]
        v, t = val_c[label], test_c[label]
        sets.loc[perm[:v]] = "val"
        sets.loc[perm[v:v + t]] = "test"
    return sets, {"val": val_c, "test": test_c}


@dataclass
class Assignment:
    """The result of `assign_splits`: `frame` has the `splits.csv` columns."""

    frame: pd.DataFrame
    mode: str
    seed: int
    val: int
    test: int
    targets: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def sets(self) -> list[str]:
        """Set names: train, val, test (always, possibly empty), then the external sets (sorted)."""
        return list(POOL_SETS) + sorted(set(self.frame["split"]) - set(POOL_SETS))


def assign_splits(
    kept: pd.DataFrame,
    *,
    mode: str = "stratified",
    val: Any = DEFAULT_FRACTION,
    test: Any = DEFAULT_FRACTION,
    seed: int = 42,
    own_split: Callable[[str], str] = source_own_split,
) -> Assignment:
    """Give every kept image a set and an index within it (rows sorted by id within a set).

    `stratified`: val/test (counts or fractions of the pool) from all `pool` sources merged.
    `given`: the sources' own split (`own_split(source)`); val (count or fraction of the train
    part) carved stratified from train; `test` is ignored. `external` sources keep their id.
    """
    if mode not in MODES:
        raise ConfigError(f"split.mode must be one of {', '.join(MODES)}, got {mode!r}")
    frame = kept[["id", "source", "role", "label"]].sort_values("id", kind="stable").reset_index(drop=True)
    split = pd.Series("", index=frame.index, dtype=object)
    external = frame["role"] == "external"
    if mode == "given":
        own = {s: own_split(s) for s in sorted(frame["source"].unique())}
        external |= frame["source"].map(own) == "external"
        given_test = ~external & (frame["source"].map(own) == "test")
        split[given_test] = "test"
        carve_from = ~external & ~given_test
        n_val, n_test = resolve_size(val, int(carve_from.sum()), "val"), 0
    else:
        carve_from = ~external
        n_pool = int(carve_from.sum())
        n_val, n_test = resolve_size(val, n_pool, "val"), resolve_size(test, n_pool, "test")
        if n_val + n_test > n_pool:
            raise SplitError(f"val {n_val} + test {n_test} exceed the {n_pool} pool images")
    split[external] = frame.loc[external, "source"]
    carved, targets = carve(frame[carve_from], n_val, n_test, seed)
    split[carve_from] = carved
    clash = set(frame.loc[external, "source"]) & set(POOL_SETS)
    if clash:
        raise ConfigError(f"external source id(s) {sorted(clash)} clash with the set names train/val/test")
    frame["split"] = split
    frame = frame.drop(columns="role")
    frame["index"] = frame.groupby("split", sort=False).cumcount().astype("int64")
    return Assignment(frame[SPLIT_COLUMNS], mode, int(seed), n_val, n_test, targets)


def kept_locations(kept: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    """id -> (shard, offset, length) in the image store."""
    cols = [kept[c].astype("int64").tolist() for c in ("shard", "offset", "length")]
    return dict(zip(kept["id"], zip(*cols)))
