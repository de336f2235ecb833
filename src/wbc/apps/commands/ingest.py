"""`wbc ingest PATH... --out manifest.csv --store DIR`: ingest archives or plain folders of images
(a user's own data: the class of an image is its parent folder name, matched to the canonical
labels case-insensitively) into a manifest and an image store."""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from wbc import LABELS
from wbc.data.archives import archive_format
from wbc.data.ingest import ingest_items, summarize
from wbc.data.store import DEFAULT_MAX_PIXELS, DEFAULT_SHARD_BYTES

HELP = "ingest archives (zip, rar, tar) or folders of images into a manifest and an image store"
_ARCHIVE_SUFFIX = re.compile(r"(\.tar)?\.(zip|rar|tar|tgz|tbz2?|txz|gz|bz2|xz)$", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="archives or folders (class = parent folder name)")
    parser.add_argument("--out", required=True, help="manifest CSV to write")
    parser.add_argument("--store", required=True, help="image store folder to write")
    parser.add_argument("--summary", help="also write the counts (JSON) here")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb guard")
    parser.add_argument("--max-member-bytes", type=int, default=100 * 2**20)
    parser.add_argument("--max-total-bytes", type=int, default=64 * 2**30)
    parser.add_argument("--shard-bytes", type=int, default=DEFAULT_SHARD_BYTES)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0 = all cores)")


def source_for(path: Path, taken: set[str]) -> dict:
    """A pseudo registry source for a user's archive or folder (id from the file name, unique)."""
    base = _ARCHIVE_SUFFIX.sub("", path.resolve().name) or "data"
    sid, n = base, 1
    while sid in taken:
        n += 1
        sid = f"{base}-{n}"
    taken.add(sid)
    return {"id": sid, "role": "pool", "root": None, "classes": {label: label for label in LABELS},
            "exclude": [], "class_from_parent": True}


def run(args: argparse.Namespace) -> int:
    taken: set[str] = set()
    items = []
    for p in map(Path, args.paths):
        archive_format(p)  # a clear error for a missing path or an unknown format, before any work
        items.append((source_for(p, taken), p))
    limits = {"max_pixels": args.max_pixels, "max_member_bytes": args.max_member_bytes,
              "max_total_bytes": args.max_total_bytes, "shard_bytes": args.shard_bytes, "workers": args.workers}
    start = time.perf_counter()
    manifest = ingest_items(items, args.out, args.store, limits)
    summary = summarize(manifest)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for sid, s in summary["sources"].items():
        t = s["totals"]
        print(f"{sid}: {t['files']} files, {t['ok']} ok, {t['quarantined']} quarantined, "
              f"{t['skipped']} skipped, {t['stored']} stored")
    print(f"wrote {args.out} and {args.store} in {time.perf_counter() - start:.1f} s")
    return 0
