"""Generalization measurement (issue 15): resnet18 and tavakoli_svm trained on real PBC, measured on
PBC's test split and on other labs' images (LISC), baseline vs each lever alone vs combinations.

Input: a finished `pbc` profile run (its kept.csv, image store, splits.csv and feature files, e.g.
`dvc exp run -S data.profile=pbc -S data.mirror=/abs/pbc` in a clone). The script packs the split
once per crop setting (`wbc.dataset.pack.pack`), trains one resnet18 per training setting
(`wbc.learn.train.train_model`, params.yaml `train` section, one seed), evaluates every model under every
test-time setting (`wbc.results.evaluate.evaluate_predictor` with the external folder set) and writes the
report (`wbc.results.generalization.write_report`). Each step is skipped when its output exists, so an
interrupted run resumes. Nothing is trained on the external set.

    python benchmarks/generalization_bench.py --run /tmp/gen --external lisc=../shared/data/external/lisc/LISC_crops.zip

`--recipes 1 2 3` makes the recipes table instead (issue 23): the baseline (params.yaml's defaults),
the previous recipe `rbc_stain` and the new `other_labs` (src/wbc/core/recipes.yaml), each trained
once per seed, plus `tavakoli_svm` and `invariant_svm`, evaluated on PBC test, the external sets and
the stress sets built from the run's test split (`wbc.dataset.stress`, `--stress-seed`), and written
over the seeds (mean ± 95 % half-width, crop fallback rates) by
`wbc.results.generalization.write_seed_report`:

    python benchmarks/generalization_bench.py --run ../pbcrun --external lisc=../shared/data/external/lisc/LISC_crops.zip \
        --out gen_out --recipes 1 2 3 --report reports/generalization_pbc.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import wbc  # noqa: F401  (first: it pins the SIMD dispatch of NumPy, OpenCV, OpenBLAS; wbc.core.dispatch)
import numpy as np
import pandas as pd

from wbc.cells.cellcrop import CropSpec
from wbc.results.evaluate import evaluate_predictor
from wbc.dataset.external import parse_specs
from wbc.results.generalization import collect, write_report, write_seed_report
from wbc.dataset.stress import build_stress_sets, stress_specs, test_rows
from wbc.core.params import load_params
from wbc.results.predictors import load_predictor
from wbc.results.report import ci_half_width
from wbc.learn import kernels
from wbc.learn.runs import train_run
from wbc.dataset.assign import Assignment, load_kept
from wbc.dataset.pack import VIEW_SEED, pack
from wbc.cells.stainnorm import lab_target
from wbc.learn.train import input_params

#: Training settings: name -> (crop, train overrides); a `lab_view_prob` needs the packing's lab views.
TRAININGS = {
    "baseline": ("centre", {}),
    "cell": ("cell", {}),
    "stain": ("centre", {"stain_augment": True}),
    "group": ("centre", {"norm": "group"}),
    "cell+stain": ("cell", {"stain_augment": True}),
    "cell+stain+group": ("cell", {"stain_augment": True, "norm": "group"}),
    # 3x the run's 4 epochs, the learning rate divided by 10 for the last 4 (StepLR)
    "cell+stain+long": ("cell", {"stain_augment": True, "epochs": 12, "step_size": 8}),
    # the same recipe on crops scaled by the red cells (wbc.cells.redcells): the cell keeps its size
    "rbc+stain+long": ("rbc", {"stain_augment": True, "epochs": 12, "step_size": 8}),
    # and with twice the colour ranges (train.stain_strength 2)
    "rbc+strong+long": ("rbc", {"stain_augment": True, "stain_strength": 2.0, "epochs": 12, "step_size": 8}),
    # recipe other_labs: + every crop path trained for (lab views: tight crops, low resolution, JPEG)
    "rbc+views+stain+long": ("rbc", {"stain_augment": True, "epochs": 12, "step_size": 8, "lab_view_prob": 0.5}),
    # + another camera's white balance (train.white_balance 0.3): measured, not in the recipe
    "rbc+views+wb+stain+long": ("rbc", {"stain_augment": True, "epochs": 12, "step_size": 8, "lab_view_prob": 0.5,
                                        "white_balance": 0.3}),
    # + MixStyle in layer1 and layer2 (train.mixstyle 0.5, wbc.learn.mixstyle): feature-level styles
    "rbc+views+mix+stain+long": ("rbc", {"stain_augment": True, "epochs": 12, "step_size": 8, "lab_view_prob": 0.5,
                                         "mixstyle": 0.5}),
}
#: The recipes table (`--recipes SEED...`): name -> (training, stain_norm, adapt, tta); the names of
#: src/wbc/core/recipes.yaml (`recipe: <name>`), the baseline being params.yaml's defaults.
RECIPES = {
    "other_labs": ("rbc+views+stain+long", "none", "balanced", True),
    "other_labs with plain adabn": ("rbc+views+stain+long", "none", "adabn", True),
    "baseline": ("baseline", "none", "none", False),
    "rbc_stain": ("rbc+stain+long", "none", "adabn", True),
    "other_labs without test-time levers": ("rbc+views+stain+long", "none", "none", False),
    "other_labs with white balance": ("rbc+views+wb+stain+long", "none", "adabn", True),
    "other_labs with mixstyle": ("rbc+views+mix+stain+long", "none", "adabn", True),
}
#: Evaluation settings: name -> (training, stain_norm, adapt, tta), in the order they are run (the
#: test-time levers on the baseline model first: they cost no training).
EVALS = {
    "baseline": ("baseline", "none", "none", False),
    "adapt=adabn": ("baseline", "none", "adabn", False),
    "stain_norm=reinhard": ("baseline", "reinhard", "none", False),
    "crop=cell": ("cell", "none", "none", False),
    "stain_augment": ("stain", "none", "none", False),
    "crop=cell + stain_augment": ("cell+stain", "none", "none", False),
    "crop=cell + stain_augment + adabn": ("cell+stain", "none", "adabn", False),
    "crop=cell + stain_augment + reinhard + adabn": ("cell+stain", "reinhard", "adabn", False),
    "norm=group": ("group", "none", "none", False),
    "crop=cell + stain_augment + norm=group": ("cell+stain+group", "none", "none", False),
    "crop=cell + stain_augment, 12 epochs": ("cell+stain+long", "none", "none", False),
    "crop=cell + stain_augment + adabn, 12 epochs": ("cell+stain+long", "none", "adabn", False),
    "crop=cell + stain_augment + reinhard + adabn, 12 epochs": ("cell+stain+long", "reinhard", "adabn", False),
    "crop=cell + stain_augment + reinhard, 12 epochs": ("cell+stain+long", "reinhard", "none", False),
    "crop=rbc + stain_augment, 12 epochs": ("rbc+stain+long", "none", "none", False),
    "crop=rbc + stain_augment + adabn, 12 epochs": ("rbc+stain+long", "none", "adabn", False),
    "crop=rbc + stain_augment + reinhard, 12 epochs": ("rbc+stain+long", "reinhard", "none", False),
    "crop=rbc + stain_augment + reinhard + adabn, 12 epochs": ("rbc+stain+long", "reinhard", "adabn", False),
    "crop=cell + stain_augment + reinhard + adabn + tta, 12 epochs": ("cell+stain+long", "reinhard", "adabn", True),
    "crop=rbc + stain_augment + tta, 12 epochs": ("rbc+stain+long", "none", "none", True),
    "crop=rbc + stain_augment + adabn + tta, 12 epochs": ("rbc+stain+long", "none", "adabn", True),
    "crop=rbc + stain_augment + reinhard + adabn + tta, 12 epochs": ("rbc+stain+long", "reinhard", "adabn", True),
    "crop=rbc + strong stain_augment, 12 epochs": ("rbc+strong+long", "none", "none", False),
    "crop=rbc + strong stain_augment + adabn, 12 epochs": ("rbc+strong+long", "none", "adabn", False),
    "crop=rbc + strong stain_augment + reinhard + adabn, 12 epochs": ("rbc+strong+long", "reinhard", "adabn", False),
    "crop=rbc + strong stain_augment + reinhard + adabn + tta, 12 epochs": ("rbc+strong+long", "reinhard", "adabn", True),
}


def reuse_centre(run: Path, dest: Path, size: int) -> bool:
    """Link the run's own packed (centre-crop) tensors into `dest`, adding the crop keys and the Lab
    target to its meta.json; False when the run's packing has another size."""
    src = run / "data/processed/packed"
    meta = json.loads((src / "meta.json").read_text()) if (src / "meta.json").is_file() else {}
    if int(meta.get("image_size", -1)) != size or meta.get("crop", "centre") != "centre":
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.npy"):
        (dest / f.name).unlink(missing_ok=True)
        (dest / f.name).symlink_to(f.resolve())
    meta.update(CropSpec().to_dict(), cell_fallback={s: 0 for s in meta["sets"]},
                lab_target=lab_target(np.load(dest / "train_x.npy", mmap_mode="r")))
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return True


def adopt(ckpt: Path, packed: Path, dest: Path) -> Path:
    """A copy of an existing checkpoint (e.g. the run's own resnet18) with the packed data's input
    params (crop, Lab target) added, as `train_model` now records them."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["params"] = {**state["params"], **input_params(json.loads((packed / "meta.json").read_text()))}
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


def packed_dir(run: Path, out: Path, crop: str, size: int, views: bool = False) -> Path:
    """The run's split packed with `crop` (made once; the centre crop reuses the run's own tensors);
    `views`: with the train set's lab views (`wbc.dataset.pack`, split seed 42)."""
    dest = out / f"packed_{crop}{'_views' if views else ''}_{size}"
    if (dest / "meta.json").is_file() or (crop == "centre" and not views and reuse_centre(run, dest, size)):
        return dest
    kept = load_kept(run / "data/interim/kept.csv")
    frame = pd.read_csv(run / "data/processed/splits.csv", dtype={"index": "int64"})
    assignment = Assignment(frame, "stratified", 42, 0, 0)
    t0 = time.time()
    meta = pack(assignment, kept, run / "data/interim/store", dest, size, workers=2, crop=CropSpec(crop),
                view_seed=VIEW_SEED + 42 if views else None)
    print(f"packed {crop}: {meta['sets']} fallback {meta['cell_fallback']} in {time.time() - t0:.0f} s", flush=True)
    return dest


def stress_sets(args: argparse.Namespace) -> dict:
    """The stress sets of the run's test split (`wbc.dataset.stress`, made once), as external specs."""
    folder = args.out / f"stress-seed{args.stress_seed}"
    if not stress_specs(folder):
        rows = test_rows(args.run / "data/processed/splits.csv", load_kept(args.run / "data/interim/kept.csv"))
        print(build_stress_sets(rows, args.run / "data/interim/store", folder, seed=args.stress_seed)["sets"], flush=True)
    return stress_specs(folder)


def svm_baseline(args: argparse.Namespace, external: dict) -> Path:
    """The feature-based model (fitted on the run's train features) evaluated on test and external sets."""
    svm = args.out / "evaluate" / "tavakoli_svm-baseline"
    if not (svm / "metrics.json").is_file():
        model = args.out / "models" / "tavakoli_svm.ckpt"
        features = args.run / "data/processed/features"
        if not model.is_file():
            print(train_run("tavakoli_svm", args.seed, packed_dir=None, features_dir=features, out=model,
                            log_dir=None, train_params=None), flush=True)
        evaluate_predictor(load_predictor(model), packed_dir(args.run, args.out, "centre", args.size), svm,
                           features_dir=features, external=external, title="tavakoli_svm")
    return svm


def seed_summary(frame: pd.DataFrame, settings: list[str], seeds: list[int]) -> str:
    """Markdown bullets: per setting repeated over seeds, mean +- Student-t 95 % half-width of each
    set's accuracy and macro-F1 (the per-seed values in brackets), in %."""
    lines = []
    for name in settings:
        labels = [name if i == 0 else f"{name}, seed {s}" for i, s in enumerate(seeds)]
        rows = frame[frame["label"].isin(labels)]
        if rows["label"].nunique() < len(labels):
            continue
        parts = []
        for set_name in dict.fromkeys(rows["set"]):
            for metric in ("accuracy", "macro_f1"):
                values = [float(rows[(rows["label"] == lab) & (rows["set"] == set_name)][metric].iloc[0]) for lab in labels]
                parts.append(f"{set_name} {metric} {np.mean(values):.1f} ± {ci_half_width(values):.1f} "
                             f"({', '.join(f'{v:.1f}' for v in values)})")
        lines.append(f"- {name} (seeds {', '.join(map(str, seeds))}): " + "; ".join(parts))
    if not lines:
        return ""
    return ("Seed summary (mean ± Student-t 95 % half-width over the seeds; per-seed values in brackets; in %):\n\n"
            + "\n".join(lines) + "\n")


#: Row labels of the recipes table.
RECIPE_LABELS = {
    "baseline": "baseline: resnet18, centre crop, 4 epochs",
    "rbc_stain": "recipe rbc_stain (previous): rbc crop + stain aug., 12 epochs, adabn + tta",
    "other_labs": "recipe other_labs (new): + lab views (every crop path), class-balanced adabn + tta",
    "other_labs with plain adabn": "other_labs model, plain adabn + tta",
    "other_labs without test-time levers": "other_labs model, no adabn / tta",
    "other_labs with white balance": "other_labs trained with white balance (train.white_balance 0.3)",
    "other_labs with mixstyle": "other_labs trained with MixStyle (train.mixstyle 0.5)",
}


def checkpoint(args: argparse.Namespace, training: str, seed: int) -> Path:
    """A trained resnet18 of one training setting and seed (the main seed keeps the plain name)."""
    tag = "" if seed == args.seed else f"-seed{seed}"
    return args.out / "models" / f"resnet18-{training}{tag}.ckpt"


def train_once(args: argparse.Namespace, training: str, seed: int, train_params: dict, packed: Path) -> Path:
    """Train one resnet18 unless its checkpoint exists."""
    ckpt = checkpoint(args, training, seed)
    if not ckpt.is_file():
        _crop, overrides = TRAININGS[training]
        t0 = time.time()
        print(train_run("resnet18", seed, packed_dir=packed, features_dir=None, out=ckpt, log_dir=None,
                        train_params={**train_params, **overrides}), f"({time.time() - t0:.0f} s)", flush=True)
    return ckpt


def feature_runs(args: argparse.Namespace, external: dict, prepared: dict) -> dict[str, list[Path]]:
    """Each feature model fitted once per seed on the run's train features and evaluated."""
    groups: dict[str, list[Path]] = {}
    features = args.run / "data/processed/features"
    for model in args.feature_models:
        for seed in args.recipes:
            dest = args.out / "evaluate" / f"{model}-seed{seed}"
            if not (dest / "metrics.json").is_file():
                path = args.out / "models" / f"{model}-seed{seed}.ckpt"
                if not path.is_file():
                    print(train_run(model, seed, packed_dir=None, features_dir=features, out=path, log_dir=None,
                                    train_params=None), flush=True)
                evaluate_predictor(load_predictor(path), packed_dir(args.run, args.out, "centre", args.size), dest,
                                   features_dir=features, external=external, title=model, prepared=prepared)
            groups.setdefault(model, []).append(dest)
    return groups


def recipes_table(args: argparse.Namespace, external: dict, train_params: dict) -> int:
    """Baseline and recipes, each trained with every seed of `--recipes`, on PBC test, the external sets
    and the stress sets: the report over seeds (`wbc.results.generalization.write_seed_report`)."""
    prepared: dict = {}  # external sets prepared once per crop (every checkpoint of a crop shares them)
    groups: dict[str, list[Path]] = {}
    notes = args.notes.read_text(encoding="utf-8") if args.notes else ""

    def report() -> None:
        summary = write_seed_report(groups, args.report, args.report.with_suffix(".png"),
                                    title="Generalization to other labs (real PBC)", notes=notes)
        print(summary.round(1).to_string(index=False), flush=True)

    for name in args.recipe_order or list(RECIPES):
        training, stain_norm, adapt, tta = RECIPES[name]
        crop, overrides = TRAININGS[training]
        packed = packed_dir(args.run, args.out, crop, args.size, views="lab_view_prob" in overrides)
        for seed in args.recipes:
            if args.trained_only and not checkpoint(args, training, seed).is_file():
                continue  # --trained-only: the table of what is trained, nothing trained now
            ckpt = train_once(args, training, seed, train_params, packed)
            dest = args.out / "evaluate" / f"recipe-{name}-seed{seed}"
            if not (dest / "metrics.json").is_file():
                evaluate_predictor(load_predictor(ckpt, stain_norm=stain_norm, adapt=adapt, tta=tta), packed, dest,
                                   external=external, title=f"{name} seed {seed}", prepared=prepared)
            groups.setdefault(RECIPE_LABELS.get(name, name), []).append(dest)
            report()
    groups.update(feature_runs(args, external, prepared))
    report()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished pbc profile run (workspace root)")
    ap.add_argument("--external", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--out", type=Path, default=Path("/tmp/gen_out"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--extra-seeds", type=int, nargs="*", default=[],
                    help="train and evaluate the --extra-only settings again with these seeds too")
    ap.add_argument("--extra-only", nargs="*", default=[], help="settings repeated with --extra-seeds")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", nargs="*", default=None, help="evaluation settings to run (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", type=Path, default=Path("reports/generalization_pbc.md"))
    ap.add_argument("--baseline-ckpt", type=Path, default=None,
                    help="use this resnet18 checkpoint (trained by the run on its centre crops with the same "
                         "params and seed) as the baseline instead of training it again")
    ap.add_argument("--notes", type=Path, default=None, help="text put under the report's title (how it was made)")
    ap.add_argument("--recipes", type=int, nargs="*", default=None, metavar="SEED",
                    help="the recipes table instead: baseline and every recipe trained with each of these seeds, "
                         "evaluated on the external sets and on the stress sets built from the run's test split")
    ap.add_argument("--recipe-order", nargs="*", default=None, help=f"recipes to run, in order (default: {list(RECIPES)})")
    ap.add_argument("--trained-only", action="store_true",
                    help="--recipes: use the resnet18 checkpoints that exist, train none (a partial table)")
    ap.add_argument("--feature-models", nargs="*", default=["tavakoli_svm", "invariant_svm"])
    ap.add_argument("--stress-seed", type=int, default=23, help="the stress sets' seed (params.yaml stress.seed)")
    ap.add_argument("--kernels", default=None,
                    help="train.cpu_kernels of every training and evaluation here (default: the run's, avx2)")
    args = ap.parse_args()
    # several models are trained and evaluated in this one process: pin the CPU kernels before
    # torch runs anything (wbc.learn.kernels), or a train_model after an evaluation would refuse
    kernels.pin_environment(args.kernels or kernels.DEFAULT_LEVEL)
    external = parse_specs({k: {"path": v} for k, _, v in (e.partition("=") for e in args.external)})
    train_params = {**load_params(args.run / "params.yaml", recipe=False)["train"], "threads": args.threads,
                    **({"cpu_kernels": args.kernels} if args.kernels else {})}
    if args.recipes is not None:
        return recipes_table(args, {**external, **stress_sets(args)}, train_params)
    runs = {"baseline (features)": svm_baseline(args, external)}
    plan = [(name, args.seed) for name in EVALS if args.only is None or name in args.only]
    plan += [(name, seed) for seed in args.extra_seeds for name in args.extra_only]
    for name, seed in plan:
        training, stain_norm, adapt, tta = EVALS[name]
        crop, _overrides = TRAININGS[training]
        packed = packed_dir(args.run, args.out, crop, args.size)
        tag = "" if seed == args.seed else f"-seed{seed}"  # the main seed keeps the plain names
        ckpt = checkpoint(args, training, seed)
        if training == "baseline" and args.baseline_ckpt and not tag and not ckpt.is_file():
            adopt(args.baseline_ckpt, packed, ckpt)
        train_once(args, training, seed, train_params, packed)
        dest = args.out / "evaluate" / f"resnet18-{name}{tag}"
        if not (dest / "metrics.json").is_file():
            evaluate_predictor(load_predictor(ckpt, stain_norm=stain_norm, adapt=adapt, tta=tta), packed, dest,
                               external=external, title=f"resnet18 {name}")
        runs[name + (f", seed {seed}" if tag else "")] = dest
        notes = args.notes.read_text(encoding="utf-8") if args.notes else ""
        frame = collect(runs)
        notes += "\n\n" + seed_summary(frame, args.extra_only, [args.seed, *args.extra_seeds])
        frame = write_report(runs, args.report, args.report.with_suffix(".png"), notes=notes)  # partial runs count
        print(frame.pivot_table(index="label", columns="set", values=["accuracy", "macro_f1"], sort=False).round(1),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
