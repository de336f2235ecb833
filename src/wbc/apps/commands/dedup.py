"""`wbc dedup DIR --out groups.csv [--mode paper|verified]`: near-duplicate groups of any image folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from wbc.core.errors import WbcError

HELP = "find near-duplicate images in a folder (recursive): one row per image with its group and keep flag"

#: file name endings treated as images
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class DedupError(WbcError):
    """A folder that cannot be deduplicated (missing, no images, nothing readable)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True,
                        help="CSV to write (path, group, keep, sharpness, ...); sharpness is measured for the "
                             "images in groups, where it picks the kept one")
    parser.add_argument("--mode", choices=("verified", "paper"), default="verified",
                        help="verified (candidates then verification, default) or paper (AHash<11 and PHash<14)")
    parser.add_argument("--workers", type=int, default=0, help="processes for decoding (0 = all cores)")
    parser.add_argument("--all-sharpness", action="store_true",
                        help="also measure sharpness and hashes of images without a duplicate (one more full decode each)")


def folder_images(root: Path) -> list[str]:
    """Image files under `root` (relative posix paths, sorted); hidden files skipped."""
    if not root.is_dir():
        raise DedupError(f"not a folder: {root}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise DedupError(f"no image files ({', '.join(IMAGE_EXTS)}) under {root}")
    return files


def _hex(codes, known) -> list[str]:
    return [f"{int(x):016x}" if k else "" for x, k in zip(codes, known)]


def dedup_folder(root: Path, mode: str = "verified", workers: int = 0, all_sharpness: bool = False) -> pd.DataFrame:
    """One row per image file: path, group, keep, sharpness, ahash/phash (hex), error (unreadable files).

    Sharpness (and, in verified mode, the hashes) are computed where they decide: for every image in
    a group of two or more; they are empty for single images unless `all_sharpness`."""
    # lazy: OpenCV, imagehash and scipy are not needed for `wbc --help`
    from wbc.dedup.fingerprints import PARTS, hash_images
    from wbc.dedup.groups import find_groups

    files = folder_images(root)
    feats = hash_images(lambda rel: (root / rel).read_bytes(), files, workers, parts=PARTS[mode])
    if not len(feats):
        raise DedupError(f"none of the {len(files)} image files under {root} could be read")
    res = find_groups(feats, mode)
    if all_sharpness:
        feats.fill_paper()
    best = res.best_pair_stats()
    rows = pd.DataFrame({
        "path": feats.keys, "group": res.group, "keep": res.keep, "group_size": res.group_sizes(),
        "sharpness": feats.sharpness.round(4),
        "ahash": _hex(feats.ahash, feats.has_paper), "phash": _hex(feats.phash, feats.has_paper),
        "score": best["score"].reindex(range(len(feats))).to_numpy(), "error": "",
    })
    bad = pd.DataFrame({"path": list(feats.errors), "group": -1, "keep": False, "group_size": 0,
                        "sharpness": float("nan"), "ahash": "", "phash": "", "score": float("nan"),
                        "error": list(feats.errors.values())})
    out = pd.concat([rows, bad], ignore_index=True) if len(bad) else rows
    return out.sort_values("path", kind="stable").reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    table = dedup_folder(args.dir, args.mode, args.workers, args.all_sharpness)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    ok = table[table["error"] == ""]
    for _, r in table[table["error"] != ""].iterrows():
        print(f"wbc dedup: unreadable: {r['path']}: {r['error']}", file=sys.stderr)
    print(f"{len(ok)} images, {int((ok['group_size'] > 1).sum())} in {ok.loc[ok['group_size'] > 1, 'group'].nunique()} "
          f"duplicate groups, {int(ok['keep'].sum())} kept, {len(table) - len(ok)} unreadable -> {args.out}")
    return 0
