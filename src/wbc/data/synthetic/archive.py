"""Writing the synthetic dataset: render the plan, encode every shot, write the zips and the truth.

`generate(out_dir, seed, scale)` writes the four zip archives of the `synth_*` sources of
`sources.yaml` and `synthetic_truth.csv` (layout of both: the package docstring). Deterministic:
zips have sorted members, fixed timestamps and ZIP_STORED; rendering runs in worker processes but
every picture has its own RNG.
"""
from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml
from tqdm import tqdm

from wbc.core.errors import ConfigError
from wbc.data.synthetic.camera import encode, take_view
from wbc.data.synthetic.plan import LAYOUTS, WBC, Namer, Task, plan
from wbc.data.synthetic.scene import render_field, smear_of
from wbc.data.synthetic.seeds import DEFAULT_SEED, item_rng

#: Fixed timestamp of every zip member.
ZIP_DATE = (2020, 1, 1, 0, 0, 0)
#: Ground-truth file name, written beside the archives.
TRUTH_FILE = "synthetic_truth.csv"
TRUTH_COLUMNS = ("source", "file", "member", "class_folder", "label", "true_label", "kind", "group",
                 "detail", "sha256")
KINDS = ("original", "near_duplicate", "exact_copy", "label_conflict", "broken", "odd_mode")


def _registry_files() -> dict[str, str]:
    """Archive file name of each synthetic source, from sources.yaml (the single source of truth)."""
    reg = yaml.safe_load(Path(__file__).parents[1].joinpath("sources.yaml").read_text(encoding="utf-8"))
    files = {sid: s["file"] for sid, s in reg["sources"].items() if s.get("generator") == "synthetic"}
    missing = [lay.source for lay in LAYOUTS if lay.source not in files]
    if missing:
        raise ConfigError(f"sources.yaml lacks the synthetic sources {missing}")
    return files


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

def _render_task(task: Task) -> list[bytes]:
    """Render one scene and encode each of its shots (runs in worker processes)."""
    field_img = render_field(task.scene, task.camera, task.factor)
    out = []
    for j, shot in enumerate(task.shots):
        rng = item_rng(task.scene.seed, task.scene.source, task.scene.index, 1 + j)
        img = take_view(field_img, task.camera, shot.view, rng, task.scene.seed)
        out.append(encode(img, shot.mode, shot.view.quality or task.camera.quality))
    return out


def _run_tasks(tasks: list[Task], workers: int) -> list[list[bytes]]:
    bar = dict(total=len(tasks), desc="synthetic images", unit="scene", disable=None)
    if workers <= 1:
        return [_render_task(t) for t in tqdm(tasks, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_render_task, tasks, chunksize=8), **bar))


def _broken_bytes(kind: str, data: bytes | None, rng: np.random.Generator) -> bytes:
    if kind == "zero":
        return b""
    if kind == "ds_store":  # like a macOS .DS_Store: "Bud1" header, 6,148 bytes
        body = rng.integers(0, 256, 6148 - 8, dtype=np.uint8).tobytes()
        return b"\x00\x00\x00\x01Bud1" + body
    assert data is not None
    return data[: int(len(data) * rng.uniform(0.35, 0.7))]


def build(seed: int = DEFAULT_SEED, scale: float = 1.0,
          workers: int = 0) -> tuple[dict[str, dict[str, bytes]], list[dict]]:
    """Render the dataset in memory: {source: {member: bytes}} and the ground-truth rows."""
    tasks, derived = plan(seed, scale)
    layouts = {lay.source: lay for lay in LAYOUTS}
    n_names = {s: sum(sh.source == s for t in tasks for sh in t.shots) + sum(d["source"] == s for d in derived)
               for s in layouts}
    namers = {s: Namer(seed, lay, n_names[s]) for s, lay in layouts.items()}
    workers = workers or (os.cpu_count() or 1)
    encoded = _run_tasks(tasks, workers)
    files: dict[str, dict[str, bytes]] = {s: {} for s in layouts}
    rows: list[dict] = []

    def add(source: str, member: str, data: bytes, label: str, kind: str, group: str, detail: str,
            true_label: str) -> None:
        lay = layouts[source]
        files[source][member] = data
        rows.append({"source": source, "member": member, "class_folder": lay.folders[label],
                     "label": label if label in WBC else "excluded", "true_label": true_label, "kind": kind,
                     "group": group, "detail": detail, "sha256": hashlib.sha256(data).hexdigest()})

    names: dict[tuple[int, int], tuple[str, str]] = {}
    for ti, (task, blobs) in enumerate(zip(tasks, encoded)):
        for si, (shot, data) in enumerate(zip(task.shots, blobs)):
            smear = smear_of(seed, task.scene.source, task.scene.smear)
            ext = "png" if shot.mode in ("P", "RGBA", "I;16") else "jpg"
            member = namers[shot.source].name(shot.label, task.scene.variant, smear.tag, ext=ext)
            names[(ti, si)] = (shot.source, member)
            if shot.kind != "_hidden":
                add(shot.source, member, data, shot.label, shot.kind, shot.group, shot.detail, task.scene.label)
    for k, d in enumerate(derived):
        of = d["of"]
        data = encoded[of[0]][of[1]] if of else None
        if d["kind"] == "broken":
            data = _broken_bytes(d["broken"], data, item_rng(seed, d["source"], 6_000_000 + k))
        smear = tasks[of[0]].scene.smear if of else k % layouts[d["source"]].smears
        member = namers[d["source"]].name(d["label"], "", smear_of(seed, d["source"], smear).tag, kind=d["detail"])
        detail = d["detail"] if not of or d["kind"] == "broken" else f"{d['detail']} of {names[of][1]}"
        true_label = "" if d.get("broken") in ("zero", "ds_store") else d.get("true_label", d["label"])
        add(d["source"], member, data, d["label"], d["kind"], d["group"], detail, true_label)
    return files, rows


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """Write a deterministic zip: sorted members, fixed timestamps, stored (no recompression)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, members[name])
    os.replace(tmp, path)
    return path


def write_truth(path: Path, rows: list[dict]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in sorted(rows, key=lambda r: (r["source"], r["member"])):
            w.writerow(row)
    os.replace(tmp, path)
    return path


def generate(out_dir: str | Path, seed: int = DEFAULT_SEED, scale: float = 1.0, workers: int = 0) -> list[Path]:
    """Write the four synthetic archives and `synthetic_truth.csv` into out_dir; return their paths.

    `scale` multiplies every image count (each planted defect kind keeps at least one instance);
    `workers` = processes for rendering (0 = all cores); the bytes do not depend on it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file_names = _registry_files()
    files, rows = build(int(seed), float(scale), int(workers))
    for row in rows:
        row["file"] = file_names[row["source"]]
    paths = [write_zip(out / file_names[lay.source], files[lay.source]) for lay in LAYOUTS]
    paths.append(write_truth(out / TRUTH_FILE, rows))
    return paths


def read_truth(path: str | Path) -> list[dict]:
    """Read synthetic_truth.csv back (all values as strings)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def iter_members(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every member of a synthetic zip, in archive order."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            yield info.filename, zf.read(info)
