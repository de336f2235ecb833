"""`wbc segment`: nucleus masks and the 51 Tavakoli features of image files, folders and zip archives.

Each input image gets `DIR/<relative path>.png` (its nucleus mask: 0 background, 255 nucleus, the
image's size; all 0 when no nucleus is found) and a row of `DIR/features.csv`: path, mask (the PNG,
relative to DIR), status (see `wbc.cells.segment` / `wbc.cells.features`), error, the 51 features.
The relative path is the image's path below the folder argument it was found in (a zip archive
counts as a folder: its members below it, named by the archive's stem when inside a folder); a file
argument keeps its name only. Unreadable inputs get a row with the error, never stop the run.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path, PurePosixPath

HELP = "nucleus masks (PNG) and the 51 Tavakoli features (features.csv) of images, folders and zip archives"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders (searched recursively) and .zip archives")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: one mask PNG per image (same relative path) and features.csv")


def relative_name(root: Path, item) -> PurePosixPath:
    """Where an input item's mask goes below DIR (without the .png suffix), given the argument it came from."""
    if root.is_dir():
        rel = PurePosixPath(item.path.relative_to(root).as_posix())
        if item.member is not None:
            rel = rel.with_suffix("") / item.member
    elif item.member is not None:
        rel = PurePosixPath(item.member)
    else:
        rel = PurePosixPath(item.path.name)
    parts = [p for p in rel.parts if p not in ("", ".", "..", "/")]
    return PurePosixPath(*parts).with_suffix("") if parts else PurePosixPath("image")


def _unique(rel: PurePosixPath, used: set[str]) -> str:
    """`rel`.png, or `rel__N`.png when an earlier input already took that name."""
    name, n = f"{rel}.png", 1
    while name in used:
        n += 1
        name = f"{rel}__{n}.png"
    used.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    """Segment every image, write the masks and features.csv. Exit status 1 when no image could be read."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from wbc.cells.features import FEATURE_NAMES, N_FEATURES, UNREADABLE, features_of
    from wbc.dataset.inputs import InputLimits, collect_inputs, iter_images  # the one place inputs are read
    from wbc.cells.segment import segment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limits = InputLimits.from_params()
    groups = [(Path(raw), collect_inputs([raw], limits)) for raw in args.paths]
    total = sum(len(items) for _, items in groups)
    used: set[str] = set()
    n_read = 0
    with open(out / "features.csv", "w", newline="", encoding="utf-8") as fh, \
            tqdm(total=total, desc="segment", unit="img", disable=None) as bar:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "mask", "status", "error", *FEATURE_NAMES])
        for root, items in groups:
            for item, image, error in iter_images(items, limits):
                bar.update()
                if image is None:
                    writer.writerow([item.name, "", UNREADABLE, error, *[""] * N_FEATURES])
                    print(f"unreadable: {item.name}: {error}", file=sys.stderr)
                    continue
                seg = segment(np.asarray(image))
                mask_name = _unique(relative_name(root, item), used)
                (out / mask_name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(seg.nucleus.astype(np.uint8) * 255, "L").save(out / mask_name)
                writer.writerow([item.name, mask_name, seg.status, "", *[f"{v:.6g}" for v in features_of(seg)]])
                n_read += 1
    print(f"{n_read} image(s) segmented, {total - n_read} unreadable -> {out}/ (masks, features.csv)")
    if n_read == 0:
        print("wbc segment: error: no image could be read", file=sys.stderr)
        return 1
    return 0
