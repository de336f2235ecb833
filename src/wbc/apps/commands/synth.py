"""`wbc synth`: write the embedded synthetic dataset (four archives + ground truth) into a folder."""
from __future__ import annotations

import argparse
import time
from collections import Counter

from wbc.data import synthetic

HELP = "generate the synthetic PBC/Raabin-style archives and synthetic_truth.csv (offline, deterministic)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the archives (created if missing)")
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED,
                        help="random seed; same seed -> byte-identical archives (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every image count; 1.0 is about 1,800 images (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0,
                        help="rendering processes, 0 = all cores; does not change the bytes (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Generate, then print one line per written file and the counts per planted-defect kind."""
    t0 = time.perf_counter()
    paths = synthetic.generate(args.out_dir, seed=args.seed, scale=args.scale, workers=args.workers)
    rows = synthetic.read_truth(paths[-1])
    per_file = Counter(r["file"] for r in rows)
    for path in paths[:-1]:
        print(f"{path}: {per_file[path.name]} files, {path.stat().st_size / 2**20:.1f} MiB")
    kinds = Counter(r["kind"] for r in rows)
    print(f"{paths[-1]}: {len(rows)} rows; " + ", ".join(f"{k} {kinds[k]}" for k in synthetic.KINDS if kinds[k]))
    print(f"generated in {time.perf_counter() - t0:.1f} s (seed {args.seed}, scale {args.scale})")
    return 0
