"""`wbc evaluate`: evaluate checkpoints on the packed test and external sets; write the result tables."""
from __future__ import annotations

import argparse
from pathlib import Path

from wbc.params import load_params

HELP = "evaluate checkpoints on the packed test/external sets (metrics, confusion matrices) and write the result tables"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                        help="checkpoints to evaluate into OUT/<file stem>/; none = the pipeline's: "
                             "models/model.pt (as headline) and models/compare/<name>.pt per `compare` "
                             "param, plus reports/metrics.json and the result tables")
    parser.add_argument("--packed", default="data/processed/packed", metavar="DIR",
                        help="packed tensors folder (default: %(default)s)")
    parser.add_argument("--out", default="reports/evaluate", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="inference batch size (default: params evaluate.batch_size in pipeline mode, else 64)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    parser.add_argument("--params", default="params.yaml", help="params file of the pipeline mode (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true",
                        help="only write reports/results.md and results.csv from existing evaluations (the report stage)")


def _evaluate_files(args: argparse.Namespace, batch_size: int) -> None:
    from wbc.models import load_checkpoint
    from wbc.predict import evaluate_model
    from wbc.train import select_device

    device = select_device(args.device)
    for ckpt in args.checkpoints:
        model, meta = load_checkpoint(ckpt, device=device)
        name = Path(ckpt).stem
        result = evaluate_model(model, meta, args.packed, Path(args.out) / name, batch_size=batch_size,
                                device=device, title=name)
        for set_name, m in result.items():
            if set_name != "model":
                print(f"{name} ({meta['model_name']}) {set_name}: n {m['n']}, accuracy {m['accuracy']}, "
                      f"macro-F1 {m['macro_f1']}, balanced accuracy {m['balanced_accuracy']}")
        print(f"wrote {Path(args.out) / name}/")


def _pipeline(args: argparse.Namespace, params: dict, batch_size: int) -> None:
    from wbc.predict import evaluate_all

    compare = {name: Path("models/compare") / f"{name}.pt" for name in params.get("compare") or []}
    results = evaluate_all("models/model.pt", compare, packed_dir=args.packed, out_root=args.out,
                           metrics_path="reports/metrics.json", batch_size=batch_size, device=args.device)
    print(f"evaluated {len(results)} model(s) -> {args.out}/, reports/metrics.json")


def run(args: argparse.Namespace) -> int:
    """Evaluate (pipeline mode or the given checkpoints); in pipeline mode also write the tables."""
    from wbc.report import write_results

    pipeline = not args.checkpoints
    params = load_params(args.params) if pipeline else {}
    batch_size = args.batch_size or int((params.get("evaluate") or {}).get("batch_size", 64))
    if not pipeline:
        _evaluate_files(args, batch_size)
        return 0
    if not args.report_only:
        _pipeline(args, params, batch_size)
    table = write_results(args.out, params["model"], params.get("compare") or [],
                          "reports/results.md", "reports/results.csv")
    print(f"result tables: {table['model'].nunique()} model(s) x {table['set'].nunique()} set(s) "
          "-> reports/results.md, reports/results.csv")
    return 0
