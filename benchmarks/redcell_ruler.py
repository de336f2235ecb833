"""How steady is the red-cell ruler (wbc.cells.redcells) within a lab, and how far apart are labs?

For every image of each set given (folders or zips of class folders, read with `wbc.dataset.inputs`): the
white cell's box (`wbc.cells.cellcrop.cell_box`) and the median red-cell diameter found outside it
(`wbc.cells.redcells.red_cell_diameter`). Prints and writes, per set: images, the share where a diameter
was measured (the others get the `cell` crop), the median diameter in px and as a fraction of the
image's shorter side, the interquartile range and the coefficient of variation (a ruler that is
steady within one lab and camera has a small one), and the seconds per image. `--figure` draws the
circles found on the first images of ONE set (only sets whose images may be shown: e.g. PBC,
CC BY 4.0). `--sides 160 96 64 48` adds the scale table: every image also downscaled (area
interpolation) to each shorter side, as a low-resolution camera would give it; per side, the share
measured and the diameter / shorter side over the same image's at native resolution (a scale-free
ruler gives 1.0 at every side).

    python benchmarks/redcell_ruler.py --set pbc=../shared/data/pbc/PBC_dataset_normal_DIB.zip \\
        --set lisc=../shared/data/external/lisc/LISC_crops.zip --figure pbc --out reports/redcells.md
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import wbc  # noqa: F401  (first: it pins the SIMD dispatch of NumPy, OpenCV, OpenBLAS; wbc.core.dispatch)
import cv2
import numpy as np

from wbc.cells.cellcrop import cell_box
from wbc.cells.labshift import Ranges, downscale
from wbc.dataset.inputs import collect_inputs, iter_images
from wbc.cells.redcells import find_red_cells, median_diameter


def relative_diameter(rgb: np.ndarray) -> float | None:
    """The image's median red-cell diameter over its shorter side, or None when not measured."""
    d = median_diameter(find_red_cells(rgb, exclude=cell_box(rgb)))
    return None if d is None else d / min(rgb.shape[:2])


def measure(path: str, every: int, sides: list[int]
            ) -> tuple[list[float], list[float], int, float, list[np.ndarray], dict[int, tuple[int, list[float]]]]:
    """(diameters in px, diameters / shorter side, images read, seconds per image at native resolution,
    first images, {side: (images measured, diameter / side over native per image measured at both)})
    in one pass over the images; each side's copy is `wbc.cells.labshift.downscale` to exactly it."""
    items = collect_inputs([path])[::every]
    diam, rel, shown, n, seconds = [], [], [], 0, 0.0
    scale: dict[int, tuple[int, list[float]]] = {side: (0, []) for side in sides}
    rng = np.random.default_rng(0)  # downscale's draw from a one-value range: unused
    for _, img, error in iter_images(items):
        if img is None:
            continue
        rgb = np.asarray(img.convert("RGB"))
        n += 1
        t0 = time.perf_counter()
        circles = find_red_cells(rgb, exclude=cell_box(rgb))
        d = median_diameter(circles)
        seconds += time.perf_counter() - t0
        if len(shown) < 10:
            shown.append(draw(rgb, circles))
        if d is not None:
            diam.append(d)
            rel.append(d / min(rgb.shape[:2]))
        for side in sides:
            small = relative_diameter(downscale(rgb, rng, Ranges(side=(side, side))))
            found, ratios = scale[side]
            if small is not None and d is not None:
                ratios.append(small / rel[-1])
            scale[side] = (found + (small is not None), ratios)
    return diam, rel, n, seconds / max(n, 1), shown, scale


def scale_rows(name: str, n: int, scale: dict[int, tuple[int, list[float]]]) -> list[str]:
    """Markdown rows of the scale table of one set (see the module doc)."""
    rows = []
    for side, (found, ratios) in scale.items():
        p10, med, p90 = np.percentile(ratios, (10, 50, 90)) if ratios else (np.nan,) * 3
        rows.append(f"| {name} | {side} | {found / max(n, 1):.1%} | {med:.3f} | {p10:.3f}-{p90:.3f} |")
    return rows


def draw(rgb: np.ndarray, circles: np.ndarray) -> np.ndarray:
    """The image (200 px a side) with the red cells found drawn in green."""
    out = rgb.copy()
    width = max(1, round(min(rgb.shape[:2]) / 150))
    for x, y, r in circles:
        cv2.circle(out, (int(round(x)), int(round(y))), int(round(r)), (0, 200, 0), width, cv2.LINE_AA)
    return cv2.resize(out, (200, 200), interpolation=cv2.INTER_AREA)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--every", type=int, default=1, help="measure every n-th image (sorted)")
    ap.add_argument("--figure", default=None, metavar="NAME", help="draw the circles of this set's first images")
    ap.add_argument("--out", type=Path, default=None, help="markdown table (and, with --figure, a .png beside it)")
    ap.add_argument("--credit", default="", help="the figure's image credit (source, licence)")
    ap.add_argument("--sides", type=int, nargs="*", default=[], help="the scale table at these shorter sides (px)")
    args = ap.parse_args()
    lines = ["| set | images | diameter measured | median diameter (px) | / shorter side | IQR (px) | CV | s / image |",
             "|:---|---:|---:|---:|---:|---:|---:|---:|"]
    figure = None
    scale_table = ["| set | shorter side (px) | diameter measured | diameter / side over native (median) | p10-p90 |",
                   "|:---|---:|---:|---:|---:|"]
    for spec in args.set:
        name, _, path = spec.partition("=")
        diam, rel, n, sec, shown, scale = measure(path, args.every, args.sides)
        scale_table += scale_rows(name, n, scale)
        d = np.asarray(diam)
        q1, med, q3 = np.percentile(d, (25, 50, 75)) if len(d) else (np.nan,) * 3
        cv = float(d.std() / d.mean()) if len(d) else np.nan
        lines.append(f"| {name} | {n} | {len(d) / max(n, 1):.1%} | {med:.1f} | {np.median(rel) if rel else np.nan:.3f} "
                     f"| {q1:.1f}-{q3:.1f} | {cv:.3f} | {sec:.3f} |")
        print(lines[-1], flush=True)
        if name == args.figure:
            figure = np.vstack([np.hstack(shown[i:i + 5]) for i in range(0, len(shown) - len(shown) % 5, 5)])
    text = "\n".join(lines) + "\n"
    if args.sides:
        print("\n".join(scale_table[2:]), flush=True)
        text += ("\nEvery image downscaled to a shorter side (area interpolation), as a low-resolution camera "
                 "would give it; the diameter over the side, divided by the same image's at native "
                 "resolution (1.000: the ruler reads the same):\n\n" + "\n".join(scale_table) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if figure is not None:
            text += (f"\n![red cells found]({args.out.with_suffix('.png').name})\n\nThe first 10 images of "
                     f"{args.figure} with the red cells found (green). {args.credit}\n")
        args.out.write_text(f"# The red-cell ruler\n\nCommand: `python {shlex.join(sys.argv)}`\n\n{text}", encoding="utf-8")
        if figure is not None:
            cv2.imwrite(str(args.out.with_suffix(".png")), cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
