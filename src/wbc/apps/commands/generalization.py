"""`wbc generalization`: in-domain vs external accuracy and macro-F1 per model and setting."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "generalization report: accuracy and macro-F1 on the test split and every external set, per model/setting"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]DIR",
                        help="evaluation folders (holding metrics.json, or folders of them), optionally labelled")
    parser.add_argument("--out", default="generalization.md", metavar="MD", help="report (default: %(default)s)")
    parser.add_argument("--plot", default="generalization.png", metavar="PNG", help="plot (default: %(default)s)")
    parser.add_argument("--notes", default="", metavar="FILE", help="a text file put under the title (how it was made)")


def run(args: argparse.Namespace) -> int:
    """Write the report and print the table."""
    # lazy: `wbc --help` imports every command; this one needs pandas
    from wbc.results.generalization import accuracy_table, write_report

    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        runs[label if sep else path] = path if sep else spec
    labelled = {k: v for k, v in runs.items()} if any("=" in s for s in args.runs) else list(runs.values())
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    frame = write_report(labelled, args.out, args.plot, notes=notes)
    print(accuracy_table(frame).round(1).to_string(index=False))
    print(f"wrote {args.out} and {args.plot}")
    return 0
