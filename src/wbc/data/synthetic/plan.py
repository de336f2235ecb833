"""What the synthetic dataset holds: the sources' layouts, which pictures, which defects, which names.

`plan(seed, scale)` lists the scenes to render with the shots taken of each (several for a
near-duplicate group) and the members derived from them at the byte level (exact copies, label
conflicts, broken files); `Namer` gives each member a realistic file name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wbc.core.errors import ConfigError
from wbc.data.synthetic.camera import PBC_CAMERA, RAABIN_CAMERA, TESTB_CAMERA, Camera, View
from wbc.data.synthetic.scene import Scene
from wbc.data.synthetic.seeds import DEFAULT_SEED, item_rng

WBC = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
EXCLUDED = ("erythroblast", "ig", "platelet")


# --------------------------------------------------------------------------------------------
# Layout: sources, class counts and planted defects
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """One synthetic source: archive layout, camera, class counts and planted defects (at scale 1)."""

    source: str
    top: str                               # top folder inside the zip
    folders: dict[str, str]                # class (true label) -> class folder name
    counts: dict[str, int]                 # class -> number of original single images
    camera: Camera
    smears: int
    naming: str                            # "pbc" or "raabin"
    defects: dict[str, int] = field(default_factory=dict)
    odd_modes: tuple[str, ...] = ()


_PBC_FOLDERS = {c: c for c in WBC + EXCLUDED}
_RAABIN_FOLDERS = {c: c.capitalize() for c in WBC}

LAYOUTS = (
    Layout("synth_pbc", "PBC_dataset_normal_DIB", _PBC_FOLDERS,
           {"neutrophil": 215, "eosinophil": 160, "lymphocyte": 85, "monocyte": 85, "basophil": 55,
            "erythroblast": 50, "ig": 70, "platelet": 50}, PBC_CAMERA, 16, "pbc",
           {"near_dup": 10, "exact_copy": 6, "label_conflict": 2, "truncated": 1, "zero": 1,
            "ds_store": 1}, ("L", "CMYK", "P")),
    Layout("synth_raabin_train", "Train", _RAABIN_FOLDERS,
           {"neutrophil": 345, "lymphocyte": 140, "monocyte": 42, "eosinophil": 42, "basophil": 18},
           RAABIN_CAMERA, 12, "raabin",
           {"near_dup": 8, "cross_dup": 4, "exact_copy": 4, "label_conflict": 1, "truncated": 1,
            "zero": 1}, ("RGBA", "I;16")),
    Layout("synth_raabin_testa", "TestA", _RAABIN_FOLDERS,
           {"neutrophil": 95, "lymphocyte": 40, "monocyte": 12, "eosinophil": 12, "basophil": 6},
           RAABIN_CAMERA, 4, "raabin", {"near_dup": 2, "exact_copy": 1, "truncated": 1}, ()),
    Layout("synth_raabin_testb", "TestB", _RAABIN_FOLDERS,
           {"neutrophil": 95, "lymphocyte": 40, "monocyte": 12, "eosinophil": 12, "basophil": 6},
           TESTB_CAMERA, 4, "raabin", {"near_dup": 2, "exact_copy": 1, "truncated": 1}, ("L",)),
)
_CROSS_TARGET = "synth_raabin_testa"   # cross-source near-duplicates: Train scene re-imaged in TestA


# --------------------------------------------------------------------------------------------
# Plan: which pictures, which defects, which names
# --------------------------------------------------------------------------------------------

@dataclass
class Shot:
    """One archive member produced from a rendered scene."""

    source: str
    label: str                # class folder's class (true label of the cell)
    kind: str
    view: View
    mode: str = "RGB"
    group: str = ""
    detail: str = ""
    member: str = ""          # filled by naming


@dataclass
class Task:
    """One scene to render and the shots taken of it (several for a near-duplicate group)."""

    scene: Scene
    camera: Camera
    shots: list[Shot]
    factor: float = 1.0


def _scaled(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(round(n * scale))) if n > 0 else 0


def _variant(rng: np.random.Generator, label: str) -> str:
    """Sub-type drawn for a cell: band/segmented neutrophil, kind of immature granulocyte."""
    if label == "neutrophil":
        return "band" if rng.random() < 0.45 else "segmented"
    if label == "ig":
        return str(rng.choice(["ig", "myelocyte", "metamyelocyte", "promyelocyte"], p=[0.4, 0.25, 0.25, 0.1]))
    return ""


def _pick_label(rng, counts: dict[str, int]) -> str:
    labels = [c for c in WBC if counts.get(c)]
    p = np.array([counts[c] for c in labels], float)
    return str(rng.choice(labels, p=p / p.sum()))


def _near_views(rng: np.random.Generator, n: int) -> list[View]:
    """The group source (plain view) and n-1 re-images: half of them slightly moved (shift <= 3 %,
    zoom +-3 %), the others up to the limits (shift 12 % of the crop, zoom +-10 %)."""
    views = [View()]
    for _ in range(n - 1):
        big = rng.random() < 0.5
        shift, zoom = (0.12, 0.1) if big else (0.03, 0.03)
        views.append(View(dx=rng.uniform(-shift, shift), dy=rng.uniform(-shift, shift),
                          zoom=rng.uniform(1 - zoom, 1 + zoom), blur=rng.uniform(0.0, 1.5),
                          exposure=rng.uniform(0.9, 1.1), quality=int(rng.integers(70, 96))))
    return views


def plan(seed: int = DEFAULT_SEED, scale: float = 1.0) -> tuple[list[Task], list[dict]]:
    """Render tasks and byte-level derived members (copies, broken files) of the whole dataset."""
    if not scale > 0:
        raise ConfigError(f"synthetic scale must be > 0, got {scale}")
    tasks: list[Task] = []
    derived: list[dict] = []    # {"source", "label", "kind", "of": (task_idx, shot_idx) | None, "detail", "group"}
    gid = {"nd": 0, "ec": 0, "lc": 0}

    def new_group(prefix: str) -> str:
        gid[prefix] += 1
        return f"{prefix}{gid[prefix]:04d}"

    for lay in LAYOUTS:
        rng = item_rng(seed, lay.source, 8_000_000)
        counts = {c: _scaled(n, scale) for c, n in lay.counts.items()}
        index = 0

        def scene(label: str) -> Scene:
            nonlocal index
            index += 1
            return Scene(seed, lay.source, index, label, _variant(rng, label), int(rng.integers(lay.smears)))

        singles: list[int] = []
        for label in sorted(counts):
            for _ in range(counts[label]):
                tasks.append(Task(scene(label), lay.camera, [Shot(lay.source, label, "original", View())]))
                if label in WBC:
                    singles.append(len(tasks) - 1)
        d = {k: _scaled(n, scale) for k, n in lay.defects.items()}
        for kind, target in (("near_dup", None), ("cross_dup", _CROSS_TARGET)):
            for _ in range(d.get(kind, 0)):
                label, g = _pick_label(rng, lay.counts), new_group("nd")
                views = _near_views(rng, int(rng.integers(2, 4)))
                shots = [Shot(lay.source, label, "original", views[0], group=g, detail="group source")]
                for j, v in enumerate(views[1:]):
                    src = target if (target and j == 0) else lay.source
                    shots.append(Shot(src, label, "near_duplicate", v, group=g, detail=v.describe()))
                tasks.append(Task(scene(label), lay.camera, shots, factor=1.4))
        for mode in lay.odd_modes:
            label = _pick_label(rng, lay.counts)
            tasks.append(Task(scene(label), lay.camera, [Shot(lay.source, label, "odd_mode", View(), mode=mode,
                                                               detail=f"mode {mode}")]))
        picks = rng.permutation(singles)
        n_ec, n_lc = d.get("exact_copy", 0), d.get("label_conflict", 0)
        for t in picks[:n_ec]:
            g = new_group("ec")
            tasks[t].shots[0].group = g
            derived.append({"source": lay.source, "label": tasks[t].scene.label, "kind": "exact_copy",
                            "of": (int(t), 0), "group": g, "detail": "byte-identical copy"})
        for t in picks[n_ec:n_ec + n_lc]:
            g, true = new_group("lc"), tasks[t].scene.label
            other = str(rng.choice([c for c in WBC if c != true and lay.counts.get(c)]))
            tasks[t].shots[0].group = g
            derived.append({"source": lay.source, "label": other, "kind": "label_conflict", "of": (int(t), 0),
                            "group": g, "detail": f"byte-identical copy filed as {other}", "true_label": true})
        for kind in ("truncated", "zero", "ds_store"):
            for _ in range(d.get(kind, 0)):
                label = "neutrophil" if kind == "ds_store" else _pick_label(rng, lay.counts)
                of = None
                if kind == "truncated":   # a render that only exists cut short ("_hidden" shot)
                    tasks.append(Task(scene(label), lay.camera, [Shot(lay.source, label, "_hidden", View())]))
                    of = (len(tasks) - 1, 0)
                derived.append({"source": lay.source, "label": label, "kind": "broken", "of": of, "group": "",
                                "detail": kind, "broken": kind})
    return tasks, derived


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_PBC_PREFIX = {"basophil": "BA", "eosinophil": "EO", "lymphocyte": "LY", "monocyte": "MO",
               "erythroblast": "ERB", "platelet": "PLATELET"}
_IG_PREFIX = {"ig": "IG", "myelocyte": "MY", "metamyelocyte": "MMY", "promyelocyte": "PMY"}


class Namer:
    """Unique, realistic file names per source (numbers drawn without replacement)."""

    def __init__(self, seed: int, layout: Layout, n: int) -> None:
        self.layout = layout
        rng = item_rng(seed, layout.source, 7_000_000)
        self.numbers = iter(rng.choice(np.arange(1, 1_000_000), size=n, replace=False).tolist())
        self.rng = rng

    def name(self, label: str, variant: str = "", smear_tag: str = "", kind: str = "", ext: str = "jpg") -> str:
        lay, num = self.layout, next(self.numbers)
        folder = lay.folders[label]
        if kind == "ds_store":
            return f"{lay.top}/{folder}/.DS_{num}.jpg"
        if lay.naming == "pbc":
            if label == "neutrophil":
                prefix = {"band": "BNE", "segmented": "SNE"}.get(variant, "SNE")
                if self.rng.random() < 0.02:
                    prefix = "NEUTROPHIL"
            elif label == "ig":
                prefix = _IG_PREFIX.get(variant, "IG")
            else:
                prefix = _PBC_PREFIX[label]
            return f"{lay.top}/{folder}/{prefix}_{num}.{ext}"
        return f"{lay.top}/{folder}/{smear_tag or '20190101'}_{num:06d}.{ext}"
