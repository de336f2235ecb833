"""`wbc download`: fetch source archives (by source id or profile name) into a folder, verified
against the checksum lock (`sources.lock.yaml` at the project root, beside dvc.lock); `--accept-new`
re-pins."""
from __future__ import annotations

import argparse
from pathlib import Path

from wbc.data import fetch, pins, sources

HELP = "download source archives (source ids or profile names) from a mirror or their origin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("names", nargs="+", metavar="SOURCE_OR_PROFILE",
                        help="source ids or profile names from src/wbc/data/sources.yaml (e.g. pbc, raabin, full)")
    parser.add_argument("--dest", default="data/raw", help="folder for the archives (default: %(default)s)")
    parser.add_argument("--mirror", default=None,
                        help="folder or http(s) base URL holding the archives by file name, tried first")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds without data before a try fails (default: %(default)s)")
    parser.add_argument("--retries", type=int, default=5, help="retries after a failed try (default: %(default)s)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default: %(default)s)")
    parser.add_argument("--lock", default=None, metavar="FILE",
                        help="checksum lock file (default: sources.lock.yaml at the project root, the nearest folder "
                             "up from here with dvc.yaml, .dvc or .git)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--accept-new", action="store_true",
                        help="upstream legitimately published a new version: forget the pinned size/sha256 of "
                             "the named sources, delete their files in --dest, download them again and pin them")


def run(args: argparse.Namespace) -> int:
    """Fetch every named source; generated (synthetic) sources are skipped with a note."""
    lock = pins.lock_path() if args.lock is None else Path(args.lock)
    for entry in sources.resolve_names(args.names):
        if entry.get("generator"):
            print(f"{entry['id']}: generated ({entry['generator']}), not downloaded: use `wbc synth`")
            continue
        result = fetch.fetch(entry, args.dest, mirror=args.mirror, timeout=args.timeout, retries=args.retries,
                             backoff=args.backoff, progress=not args.no_progress, lock=lock,
                             accept_new=args.accept_new)
        how = "already present, verified" if result.reused else f"from {result.origin}"
        pinned = f", pinned in {lock}" if result.pinned else ""
        print(f"{entry['id']}: {result.path} ({result.size / 2**20:.1f} MiB, sha256 {result.sha256}) {how}{pinned}")
    return 0
