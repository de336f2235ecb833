"""AdaBN under label shift: another lab's labelled set drawn to other class mixes, adapted with plain
AdaBN (`adapt: adabn`) and with class-balanced AdaBN (`adapt: balanced`, wbc.learn.adapt).

A lab's folder is rarely balanced: in blood about 60 % of the white cells are neutrophils, 30 %
lymphocytes, 6 % monocytes, 3 % eosinophils and 1 % basophils. The set (e.g. LISC, nearly balanced) is
drawn to such a mix (`--draws` seeded draws per mix, every image of the limiting class kept), and each
draw is predicted by each checkpoint (with tta when asked):

- `none`: the trained statistics;
- `adabn`: AdaBN on the draw itself (what `wbc predict --adapt adabn` does on a lab's folder);
- `balanced`: class-balanced AdaBN on the draw (`wbc predict --adapt`);
- `adabn on the whole set`: AdaBN on the whole, balanced set, scored on the draw's images: the
  statistics a balanced folder of that lab would give (a reference, not available to a user).

Prints the mean accuracy (%) per mix and mode over draws and checkpoints, and writes it as a markdown
table with `--out`. Example (LISC, the other_labs seeds of the generalization benchmark):

    python benchmarks/adabn_label_shift.py --set lisc=../shared/data/external/lisc/LISC_crops.zip \\
        --model ../gen_out_ruler/models/resnet18-rbc+views+stain+long.ckpt ... --tta --out reports/adabn_label_shift.md
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import wbc  # noqa: F401  (first: it pins the SIMD dispatch of NumPy, OpenCV, OpenBLAS; wbc.core.dispatch)
import numpy as np
import pandas as pd
import torch

from wbc.dataset.external import load_external
from wbc.results.predictors import load_predictor

#: Class mixes (fractions of the five classes); `as given` keeps the set as it is.
MIXES = {
    "blood (60/30/6/3/1 %)": {"neutrophil": 0.60, "lymphocyte": 0.30, "monocyte": 0.06, "eosinophil": 0.03,
                              "basophil": 0.01},
    "lymphocytes (25/60/10/4/1 %)": {"neutrophil": 0.25, "lymphocyte": 0.60, "monocyte": 0.10, "eosinophil": 0.04,
                                     "basophil": 0.01},
    "as given": None,
}
MODES = ("none", "adabn", "balanced")


def draw(y: np.ndarray, classes: list[str], mix: dict[str, float] | None, seed: int) -> np.ndarray:
    """Rows of one draw of `mix` (sorted): as many images as the class that runs out first allows."""
    if mix is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(y == classes.index(c)) for c in mix}
    total = min(len(by_class[c]) / f for c, f in mix.items())
    rows = [rng.choice(by_class[c], size=min(len(by_class[c]), max(1, round(total * f))), replace=False)
            for c, f in mix.items()]
    return np.sort(np.concatenate(rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", required=True, metavar="NAME=PATH", help="a labelled folder or zip of class folders")
    ap.add_argument("--model", required=True, nargs="+", help="CNN checkpoints (e.g. the seeds of one recipe)")
    ap.add_argument("--draws", type=int, default=8, help="seeded draws per mix (default: %(default)s)")
    ap.add_argument("--tta", action="store_true", help="8 rotations and reflections per image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the table as markdown")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name, path = args.set.split("=", 1)
    rows, t0 = [], time.time()
    first = load_predictor(args.model[0])
    ext = load_external(name, {"path": path}, first, first.classes)
    x, y, classes = ext.x, ext.y, first.classes
    for ckpt in args.model:
        base = {m: load_predictor(ckpt, adapt=m, tta=args.tta) for m in MODES}
        if base["none"].crop != first.crop or base["none"].meta["image_size"] != first.meta["image_size"]:
            raise SystemExit(f"{ckpt}: another crop or size than {args.model[0]}; give checkpoints of one recipe")
        whole = base["adabn"].adapted(x).predict(x).argmax(axis=1)
        for mix_name, mix in MIXES.items():
            for d in range(args.draws if mix else 1):
                r = draw(y, classes, mix, seed=1000 + d)
                xs, ys = x[r], y[r]
                row = {"mix": mix_name, "model": Path(ckpt).name, "draw": d, "n": len(r),
                       "adabn on the whole set": float((whole[r] == ys).mean())}
                for m, p in base.items():
                    row[m] = float((p.adapted(xs).predict(xs).argmax(axis=1) == ys).mean())
                rows.append(row)
                print({k: (round(100 * v, 1) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    frame = pd.DataFrame(rows)
    cols = list(MODES) + ["adabn on the whole set"]
    table = frame.groupby("mix", sort=False).agg(n=("n", "mean"), **{c: (c, "mean") for c in cols})
    per_model = frame.groupby(["mix", "model"], sort=False)[cols].mean().groupby("mix", sort=False)
    spread = (per_model.max() - per_model.min())[["adabn", "balanced"]].add_suffix(" range over models")
    table = pd.concat([table, spread], axis=1)
    for c in table.columns[1:]:
        table[c] = (100 * table[c]).round(1)
    table["n"] = table["n"].round(0).astype(int)
    print(table.to_string(), f"\n({time.time() - t0:.0f} s)")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip():
            commit += " with uncommitted changes to src/"
        models = ", ".join(f"`{Path(m).name}`" for m in args.model)
        text = (f"# AdaBN under label shift ({name})\n\n"
                f"Accuracy in % on `{name}` drawn to other class mixes (neutrophils / lymphocytes / monocytes / "
                f"eosinophils / basophils; {args.draws} seeded draws per mix, every image of the class that runs "
                f"out first), mean over "
                f"the draws and the checkpoints {models}{' (tta)' if args.tta else ''}; `range over models`: the "
                f"spread of the per-checkpoint means. Written by `benchmarks/adabn_label_shift.py` at commit {commit} "
                f"(`{' '.join(Path(a).name if a.endswith('.ckpt') else a for a in sys.argv[1:])}`).\n\n"
                + table.reset_index().to_markdown(index=False) + "\n")
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
