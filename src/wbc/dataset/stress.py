"""Stress sets: the test split's images as other labs would hand them over (stage `stress`, `wbc stress`).

Every image of the test split (never trained on) is degraded once per kind of
`wbc.cells.labshift.KINDS` (tight crops without red cells at 80-120 px, the whole field at 80-120
px, JPEG, another white balance, all of these together) and written, per kind, to ONE zip of class
folders `<kind>.zip` (`<label>/<id>.png`, the id's "/" as "__", or `.jpg` where the kind's last step is JPEG: the bytes
the JPEG step made are the bytes stored). The evaluate stages read each zip as an external set
named `stress_<kind>` (`wbc.dataset.external`), prepared with the model's own crop, and count the
crop paths it took: a stress set is where the fallback crops show up.

Deterministic: each image's draws come from a generator seeded by (seed, kind, the image id's
CRC-32), so an image gets the same degradation whatever the order or the number of workers; zip
members are written sorted, with a fixed timestamp. `summary.json` counts per kind the images
written and those that could not be read (none are dropped silently: in = written + unreadable).
"""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from wbc.cells.labshift import KINDS, degrade_encoded
from wbc.core.errors import ConfigError, WbcError
from wbc.data.store import ImageStore, decode_image
from wbc.dataset.assign import kept_locations

#: Set names of the stress zips in the evaluations: `stress_<kind>`.
PREFIX = "stress_"
_DATE = (1980, 1, 1, 0, 0, 0)


def check_kinds(kinds: Sequence[str]) -> list[str]:
    """`kinds` as a list, a ConfigError for an unknown or repeated one."""
    kinds = [str(k) for k in kinds]
    bad = sorted(set(kinds) - set(KINDS))
    if bad or len(set(kinds)) != len(kinds):
        raise ConfigError(f"stress.kinds: {kinds} (valid, each once: {', '.join(KINDS)})")
    return kinds


def image_rng(seed: int, kind: str, image_id: str) -> np.random.Generator:
    """The generator of one image's draws for one kind."""
    return np.random.default_rng([int(seed), KINDS.index(kind), zlib.crc32(image_id.encode("utf-8"))])


def member_name(label: str, image_id: str, suffix: str) -> str:
    """The zip member of one image: `<label>/<id>` with the id's "/" and ":" made "__" (an id such as
    `pbc/<folder>/<class>/<file>` must not add folders: the class folder is the member's parent)."""
    flat = image_id.replace("/", "__").replace("\\", "__").replace(":", "__")
    return f"{label}/{flat}{suffix}"


def test_rows(splits_csv: str | Path, kept: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The rows (id, label, store location) of one set of the split, in packed order."""
    splits = pd.read_csv(splits_csv, dtype={"id": str, "split": str, "label": str})
    rows = splits[splits["split"] == split].sort_values("index", kind="stable")
    if rows.empty:
        raise WbcError(f"{splits_csv}: no image in the {split} set")
    locs = kept_locations(kept)
    missing = [i for i in rows["id"] if i not in locs]
    if missing:
        raise WbcError(f"{len(missing)} {split} image(s) of {splits_csv} are not in the kept manifest "
                       f"(e.g. {missing[0]}): re-run the split stage")
    return rows.assign(loc=[locs[i] for i in rows["id"]])[["id", "label", "loc"]].reset_index(drop=True)


def build_stress_sets(rows: pd.DataFrame, store_root: str | Path, out_dir: str | Path, *,
                      kinds: Sequence[str] = KINDS, seed: int = 0) -> dict[str, Any]:
    """Write `<out_dir>/<kind>.zip` per kind from `rows` (id, label, loc); returns the summary."""
    kinds = check_kinds(kinds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.zip"):
        stale.unlink()
    store = ImageStore(store_root)
    zips = {k: zipfile.ZipFile(out / f"{k}.zip", "w", zipfile.ZIP_STORED) for k in kinds}
    written = {k: 0 for k in kinds}
    unreadable: list[str] = []
    try:
        for image_id, label, loc in tqdm(rows[["id", "label", "loc"]].itertuples(index=False), total=len(rows),
                                         desc="stress sets", unit="img", disable=None):
            try:
                rgb = np.asarray(decode_image(store.read(*loc)).convert("RGB"))
            except WbcError:
                unreadable.append(str(image_id))
                continue
            for kind in kinds:
                data, suffix = degrade_encoded(rgb, kind, image_rng(seed, kind, str(image_id)))
                info = zipfile.ZipInfo(member_name(str(label), str(image_id), suffix), date_time=_DATE)
                zips[kind].writestr(info, data)
                written[kind] += 1
    finally:
        for z in zips.values():
            z.close()
    summary = {"images": int(len(rows)), "seed": int(seed), "unreadable": sorted(unreadable),
               "sets": {f"{PREFIX}{k}": {"file": f"{k}.zip", "images": written[k]} for k in kinds}}
    return summary


def stress_specs(stress_dir: str | Path | None) -> dict[str, dict[str, Any]]:
    """The stress zips of a folder as external-set specs {`stress_<kind>`: {"path", "classes"}}, in
    `KINDS` order; {} for None or a folder without them."""
    if stress_dir is None:
        return {}
    folder = Path(stress_dir)
    return {f"{PREFIX}{k}": {"path": folder / f"{k}.zip", "classes": {}}
            for k in KINDS if (folder / f"{k}.zip").is_file()}


def write_summary(summary: dict[str, Any], reports_dir: str | Path) -> Path:
    """`<reports_dir>/summary.json`."""
    path = Path(reports_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
