"""The `wbc` command-line tool. Each subcommand lives in wbc.apps.commands.<name> and exposes
`HELP` (one line), `add_arguments(parser)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys

from wbc.core import dispatch
from wbc.core.errors import WbcError

#: subcommand name -> module under wbc.apps.commands
COMMANDS = {
    "synth": "synth",
    "download": "download",
    "ingest": "ingest",
    "dedup": "dedup",
    "split": "split",
    "stress": "stress",
    "features": "features",
    "train": "train",
    "evaluate": "evaluate",
    "report": "report",
    "predict": "predict",
    "segment": "segment",
    "serve": "serve",
    "generalization": "generalization",
    "verify": "verify",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wbc",
        description="wbc-repro: white-blood-cell datasets (PBC, Raabin-WBC) — synthesize, download, ingest, "
        "deduplicate, split, compute features, train, evaluate, report and predict. Every pipeline stage is also a command here.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"wbc.apps.commands.{module}")
        except ModuleNotFoundError as exc:  # a command not written yet
            if exc.name != f"wbc.apps.commands.{module}":
                raise
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dispatch.check()  # NumPy / OpenCV run the pinned SIMD code (wbc.core.dispatch)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing errors: one clear line, no traceback
        if isinstance(exc, WbcError):
            print(f"wbc {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
