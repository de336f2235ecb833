"""Merge the kept images of all sources into one five-class dataset and split it without leakage.

Pipeline of this module (used by `stages/split.py` and `wbc split`):

1. `load_kept` reads the dedup output (manifest rows, see docs/design.md).
2. `assign_splits` gives every image a set: `train`, `val`, `test` for `pool` sources, and the
   source id for `external` sources (test-only sets kept by name).
   - `stratified`: val/test carved from the merged pool, per-class counts by largest-remainder
     apportionment (exact totals, each class within +-1 of its proportional target), then a
     seeded permutation per class of the id-sorted images.
   - `given`: each source's own split from the registry (`split: train|test|external`); val is
     carved (stratified) from the train part.
3. `audit_leakage` re-checks every pair of images across sets with the dedup stage's test.
4. `pack` writes `<set>_x.npy` (uint8 NCHW, `wbc.cells.cellcrop.crop_square`: the centre square or a
   square centred on the white cell, `split.crop` / `split.cell_fraction`; bicubic resize) /
   `<set>_y.npy` and `meta.json` (with the crop, the count of cell-crop fallbacks per set and the
   training set's Lab statistics `lab_target` for `wbc.cells.stainnorm`), streaming into memory-mapped files.
5. `summarize`, `distribution_markdown`, `plot_distribution`, `plot_samples` write the reports.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from wbc import LABELS
from wbc.cells.cellcrop import DEFAULT_SPAN, CropSpec, crop_square
from wbc.cells.stainnorm import lab_target
from wbc.core.errors import ConfigError, WbcError
from wbc.core.parallel import n_workers
from wbc.data.plots import class_samples
from wbc.data.sources import get_source, profile_split
from wbc.data.store import ImageStore, decode_image
from wbc.dedup import cross_duplicates

#: The sets made from `pool` sources, in order; external sets (source ids) follow.
POOL_SETS = ("train", "val", "test")
MODES = ("stratified", "given")
#: ImageNet normalisation, recorded in meta.json for train/evaluate.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


# --------------------------------------------------------------------------------------------
# Leakage audit
# --------------------------------------------------------------------------------------------

def audit_leakage(
    assignment: Assignment,
    kept: pd.DataFrame,
    store_root: str | Path,
    dedup_params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Confirmed duplicate pairs across different sets (`wbc.dedup.cross_duplicates`)."""
    return cross_duplicates(loaders_by_set(assignment, kept, store_root), dict(dedup_params or {}))


def loaders_by_set(assignment: Assignment, kept: pd.DataFrame, store_root: str | Path) -> dict[str, Any]:
    """`{set: (load_fn, ids)}` for `cross_duplicates`: load_fn(id) -> the image's stored bytes."""
    store = ImageStore(store_root)
    locs = _locations(kept)

    def load(image_id: str) -> bytes:
        return store.read(*locs[image_id])

    frame = assignment.frame
    return {s: (load, frame.loc[frame["split"] == s, "id"].tolist()) for s in assignment.sets}


def _locations(kept: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    """id -> (shard, offset, length) in the image store."""
    cols = [kept[c].astype("int64").tolist() for c in ("shard", "offset", "length")]
    return dict(zip(kept["id"], zip(*cols)))


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


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------

def square_resize(img: Image.Image, size: int) -> np.ndarray:
    """Centre square crop, bicubic (antialiased) resize to size x size -> uint8 (3, S, S)
    (`wbc.cells.cellcrop.crop_square` with the centre crop)."""
    return crop_square(img, size)[0]


_WORKER: dict[str, Any] = {}


def _init_worker(store_root: str, size: int, crop: CropSpec = CropSpec()) -> None:
    _WORKER["store"] = ImageStore(store_root)
    _WORKER["size"] = size
    _WORKER["crop"] = crop


def _prepare(item: tuple[str, tuple[int, int, int]]) -> tuple[np.ndarray, bool]:
    """(uint8 (3, S, S) input, cell found) of one stored image (`wbc.cells.cellcrop.crop_square`)."""
    image_id, loc = item
    try:
        return crop_square(decode_image(_WORKER["store"].read(*loc)), _WORKER["size"], _WORKER["crop"])
    except WbcError as exc:
        raise WbcError(f"{image_id}: {exc}") from None


def _prepared(items: list[tuple[str, tuple[int, int, int]]], store_root: str, size: int,
              workers: int, crop: CropSpec = CropSpec()) -> Iterator[tuple[np.ndarray, bool]]:
    """(input, cell found) of (id, location) items, in order (parallel when workers > 1)."""
    if workers <= 1 or len(items) < 64:
        _init_worker(store_root, size, crop)
        yield from map(_prepare, items)
        return
    with get_context("fork" if os.name == "posix" else "spawn").Pool(
        workers, initializer=_init_worker, initargs=(store_root, size, crop)
    ) as pool:
        yield from pool.imap(_prepare, items, chunksize=16)


def pack(
    assignment: Assignment,
    kept: pd.DataFrame,
    store_root: str | Path,
    out_dir: str | Path,
    image_size: int,
    *,
    workers: int | None = 0,
    crop: CropSpec = CropSpec(),
) -> dict[str, Any]:
    """Write `<set>_x.npy` (uint8, N x 3 x S x S), `<set>_y.npy` (int64) and `meta.json`.

    Images are streamed into a memory-mapped `.npy` (never the whole set in RAM). Stale
    `*_x.npy`/`*_y.npy` files of an earlier run are removed first. Returns the meta dict, which
    records the crop (`crop`, `cell_fraction`), per set the images whose cell was not found (centre
    crop instead, `cell_fallback`) and the train set's Lab statistics (`lab_target`).
    """
    if int(image_size) < 8:
        raise ConfigError(f"split.image_size must be >= 8, got {image_size!r}")
    size, workers = int(image_size), n_workers(int(workers or 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*_x.npy"), *out.glob("*_y.npy"), out / "meta.json"]:
        stale.unlink(missing_ok=True)
    locs = _locations(kept)
    frame = assignment.frame
    counts: dict[str, int] = {}
    fallback: dict[str, int] = {}
    for name in assignment.sets:
        rows = frame[frame["split"] == name].sort_values("index")
        counts[name], fallback[name] = _pack_set(rows, locs, str(store_root), out, name, size, workers, crop)
    external = [s for s in assignment.sets if s not in POOL_SETS]
    meta = {
        "classes": list(LABELS), "image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "sets": counts, "external": external, **crop.to_dict(), "cell_fallback": fallback,
        "lab_target": lab_target(np.load(out / "train_x.npy", mmap_mode="r")),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _pack_set(rows: pd.DataFrame, locs: Mapping[str, tuple[int, int, int]], store_root: str, out: Path, name: str, size: int,
              workers: int, crop: CropSpec = CropSpec()) -> tuple[int, int]:
    """Pack one set; returns its image count and how many fell back to the centre crop."""
    n, missed = len(rows), 0
    where = [(i, locs[i]) for i in rows["id"]]
    x = np.lib.format.open_memmap(out / f"{name}_x.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    it = _prepared(where, store_root, size, workers, crop)
    for i, (arr, found) in enumerate(tqdm(it, total=n, desc=f"pack {name}", unit="img", disable=None)):
        x[i] = arr
        missed += not found
    x.flush()
    del x
    y = np.array([LABELS.index(lab) for lab in rows["label"]], dtype=np.int64)
    np.save(out / f"{name}_y.npy", y)
    return n, missed


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

def summarize(assignment: Assignment, kept_rows: int, audit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """summary.json: counts per set x class x source, per set x class, totals, targets, audit."""
    frame = assignment.frame
    counts: dict[str, dict[str, dict[str, int]]] = {}
    per_class: dict[str, dict[str, int]] = {}
    for name in assignment.sets:
        sub = frame[frame["split"] == name]
        per_class[name] = {lab: int((sub["label"] == lab).sum()) for lab in LABELS}
        counts[name] = {
            lab: {src: int(n) for src, n in sub[sub["label"] == lab]["source"].value_counts().sort_index().items()}
            for lab in LABELS
        }
    summary: dict[str, Any] = {
        "mode": assignment.mode,
        "seed": assignment.seed,
        "requested": {"val": assignment.val, "test": assignment.test},
        "targets": assignment.targets,
        "kept_rows": int(kept_rows),
        "images": int(len(frame)),
        "totals": {name: int((frame["split"] == name).sum()) for name in assignment.sets},
        "per_class": per_class,
        "counts": counts,
    }
    if audit is not None:
        summary["audit"] = dict(audit)
    return summary


def distribution_markdown(summary: Mapping[str, Any]) -> str:
    """A class-distribution table: count and percentage of each class per set, then totals."""
    sets = list(summary["totals"])
    head = "| class | " + " | ".join(sets) + " | all |"
    lines = [
        f"# Class distribution ({summary['mode']} split, seed {summary['seed']})", "",
        "Count and percentage of the set's images per class.", "",
        head, "|---|" + "---:|" * (len(sets) + 1),
    ]
    grand = sum(summary["totals"].values())
    for lab in LABELS:
        cells = [_pct(summary["per_class"][s][lab], summary["totals"][s]) for s in sets]
        n_all = sum(summary["per_class"][s][lab] for s in sets)
        lines.append(f"| {lab} | " + " | ".join(cells) + f" | {_pct(n_all, grand)} |")
    totals = [f"**{summary['totals'][s]:,}**" for s in sets]
    lines.append("| **total** | " + " | ".join(totals) + f" | **{grand:,}** |")
    lines += ["", "## Per source", "", "| set | class | " + " | ".join(_sources(summary)) + " |",
              "|---|---|" + "---:|" * len(_sources(summary))]
    for s in sets:
        for lab in LABELS:
            row = [str(summary["counts"][s][lab].get(src, 0)) for src in _sources(summary)]
            lines.append(f"| {s} | {lab} | " + " | ".join(row) + " |")
    if "audit" in summary:
        lines += ["", f"Leakage audit: {summary['audit']['cross_split_duplicates']} duplicate pair(s) across sets."]
    return "\n".join(lines) + "\n"


def _pct(n: int, total: int) -> str:
    return f"{n:,} ({100.0 * n / total:.1f}%)" if total else "0 (0.0%)"


def _sources(summary: Mapping[str, Any]) -> list[str]:
    return sorted({src for by_lab in summary["counts"].values() for srcs in by_lab.values() for src in srcs})


def plot_distribution(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bar chart: images per class, one bar per set (matplotlib, Agg)."""
    import matplotlib  # lazy: matplotlib takes a second to import and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sets = list(summary["totals"])
    width = 0.8 / max(len(sets), 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, s in enumerate(sets):
        xs = np.arange(len(LABELS)) + (i - (len(sets) - 1) / 2) * width
        bars = ax.bar(xs, [summary["per_class"][s][lab] for lab in LABELS], width, label=f"{s} ({summary['totals'][s]:,})")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(LABELS)), LABELS)
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution per set ({summary['mode']} split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_samples(
    assignment: Assignment, kept: pd.DataFrame, store_root: str | Path, path: str | Path, *, per_class: int = 6,
    seed: int = 0,
) -> Path:
    """A grid of `per_class` random training images per class (seeded, from the image store)."""
    train_ids = assignment.frame.loc[assignment.frame["split"] == "train", "id"]
    train = kept[kept["id"].isin(train_ids)]
    return class_samples(train, store_root, path, per_class=per_class, seed=seed,
                         title="Random training images per class")


# --------------------------------------------------------------------------------------------
# The whole stage
# --------------------------------------------------------------------------------------------

def run_split(
    kept_csv: str | Path,
    store_root: str | Path,
    *,
    splits_csv: str | Path,
    packed_dir: str | Path,
    reports_dir: str | Path,
    mode: str = "stratified",
    val: Any = None,
    test: Any = None,
    seed: int = 42,
    image_size: int = 64,
    profile: str | None = None,
    dedup_params: Mapping[str, Any] | None = None,
    workers: int | None = 0,
    audit: Callable[..., pd.DataFrame] | None = None,
    crop: str = "centre",
    cell_fraction: float = 0.6,
    rbc_span: float = DEFAULT_SPAN,
) -> dict[str, Any]:
    """Split, audit, pack and report; returns the summary (also written to summary.json).

    `val`/`test` None -> the profile's defaults (`wbc.data.sources.profile_split`). `crop`/`cell_fraction`/
    `rbc_span`: `wbc.cells.cellcrop` (the summary's `crop` counts the images whose crop fell back, per set).
    """
    spec = CropSpec(crop, cell_fraction, rbc_span)
    defaults = profile_split_defaults(profile) if val is None or test is None else {}
    val = defaults.get("val", DEFAULT_FRACTION) if val is None else val
    test = defaults.get("test", DEFAULT_FRACTION) if test is None else test
    kept = load_kept(kept_csv)
    if kept.empty:
        raise WbcError(f"{kept_csv}: no usable images (status ok, canonical label, stored)")
    assignment = assign_splits(kept, mode=mode, val=val, test=test, seed=seed)
    pairs = (audit or audit_leakage)(assignment, kept, store_root, dedup_params)
    splits_csv = Path(splits_csv)
    splits_csv.parent.mkdir(parents=True, exist_ok=True)
    assignment.frame.to_csv(splits_csv, index=False, lineterminator="\n")
    meta = pack(assignment, kept, store_root, packed_dir, image_size, workers=workers, crop=spec)
    summary = summarize(assignment, len(kept), summarize_audit(pairs))
    summary["image_size"] = int(image_size)
    summary["crop"] = {**spec.to_dict(), "fallback": meta["cell_fallback"]}
    write_reports(summary, assignment, kept, store_root, reports_dir, seed=seed)
    return summary


def leakage_warning(summary: Mapping[str, Any]) -> str:
    """A one-line warning when a stratified split has cross-split duplicates (else "")."""
    n = int(summary.get("audit", {}).get("cross_split_duplicates", 0))
    if n == 0 or summary.get("mode") != "stratified":
        return ""
    by_sets = ", ".join(f"{k}: {v}" for k, v in summary["audit"]["by_sets"].items())
    return f"{n} duplicate pair(s) across sets ({by_sets}); run dedup first (see reports/split/summary.json)"


def write_reports(summary: Mapping[str, Any], assignment: Assignment, kept: pd.DataFrame, store_root: str | Path,
                  reports_dir: str | Path, *, seed: int) -> None:
    """summary.json, distribution.md, distribution.png, samples.png."""
    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "distribution.md").write_text(distribution_markdown(summary), encoding="utf-8")
    plot_distribution(summary, out / "distribution.png")
    plot_samples(assignment, kept, store_root, out / "samples.png", seed=seed)


def parse_size_arg(text: str | None) -> int | float | None:
    """CLI helper: '3200' -> 3200, '0.15' -> 0.15, None -> None."""
    if text is None:
        return None
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


__all__: Sequence[str] = [
    "Assignment", "SplitError", "apportion", "assign_splits", "audit_leakage", "carve", "class_targets",
    "distribution_markdown", "leakage_warning", "load_kept", "pack", "plot_distribution", "plot_samples", "resolve_size",
    "run_split", "square_resize", "summarize", "summarize_audit",
]
