"""`wbc verify`: does a fresh `dvc repro` reproduce the committed results (wbc.results.verify)?"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "check a fresh run against the committed results: dvc.lock bit for bit on x86-64 CPUs, else within tolerances"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("--results", default="reports/results_seeds.csv", metavar="CSV",
                        help="the fresh per-seed results (default: %(default)s)")
    parser.add_argument("--lock", default="dvc.lock", metavar="FILE", help="the fresh dvc.lock (default: %(default)s)")
    parser.add_argument("--ref", default="HEAD", help="git revision holding the committed results (default: %(default)s)")
    parser.add_argument("--reference-results", default=None, metavar="CSV",
                        help="the committed per-seed results as a file (instead of reading them at --ref)")
    parser.add_argument("--reference-lock", default=None, metavar="FILE", help="the committed dvc.lock as a file")
    parser.add_argument("--mode", choices=("auto", "bits", "tolerance"), default="auto",
                        help="bits: dvc.lock must be identical; tolerance: metrics within the seed-spread interval; "
                             "auto: bits on an x86-64 CPU with AVX2 and no CUDA, else tolerance (default: %(default)s)")
    parser.add_argument("--floor", type=float, default=0.01,
                        help="smallest tolerance, as a fraction (default: %(default)s = 1 point)")
    parser.add_argument("--out", default=None, metavar="MD", help="also write the report to this markdown file")


def run(args: argparse.Namespace) -> int:
    """Print the verdict; exit 0 on PASS, 1 on FAIL."""
    # lazy: `wbc --help` imports every command; verify needs pandas and scipy
    from wbc.results.verify import bits_possible, report, verify

    read = (lambda p: None if p is None else Path(p).read_text(encoding="utf-8"))
    verdict = verify(args.results, args.lock, reference_results=read(args.reference_results),
                     reference_lock=read(args.reference_lock), ref=args.ref, mode=args.mode, floor=args.floor)
    text = report(verdict)
    if args.mode == "auto":
        text = text.replace("\nCheck:", f"\nThis machine: {bits_possible()[1]}.\nCheck:", 1)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0 if verdict.ok else 1
