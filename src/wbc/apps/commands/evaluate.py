"""`wbc evaluate`: evaluate model files (any kind) on the packed test and external sets."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate model files (CNN checkpoints or tavakoli_svm) on the packed test/external sets (metrics, confusion matrices)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("models", nargs="+", metavar="MODEL_FILE",
                        help="model files to evaluate, each into OUT/<file stem>/")
    parser.add_argument("--ensemble", default=None, metavar="NAME",
                        help="evaluate the CNN checkpoints given as ONE model, the mean of their probabilities "
                             "(e.g. the seeds of one model, wbc.results.ensemble), into OUT/NAME/")
    parser.add_argument("--packed", default="data/processed/packed", metavar="DIR",
                        help="packed tensors folder (default: %(default)s)")
    parser.add_argument("--features", default="data/processed/features", metavar="DIR",
                        help="feature files of the sets, for tavakoli_svm (default: %(default)s)")
    parser.add_argument("--out", default="reports/evaluate", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch size (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    parser.add_argument("--adapt", choices=("none", "adabn", "balanced"), default="none",
                        help="adabn: re-estimate BatchNorm statistics on each other lab's set (external sets), on its "
                             "own images; balanced: again on a class-balanced resample of them (wbc.learn.adapt); "
                             "the in-domain test split keeps the trained ones (default: %(default)s)")
    parser.add_argument("--stain-norm", choices=("none", "reinhard"), default="none",
                        help="reinhard: map each image's Lab statistics to the training set's (default: %(default)s)")
    parser.add_argument("--tta", action="store_true",
                        help="average the probabilities of each image's 8 rotations and reflections (CNNs; 8x slower)")
    parser.add_argument("--stress", default=None, metavar="DIR",
                        help="a folder of stress sets (stage stress, `wbc stress`): each zip is evaluated as a set")
    parser.add_argument("--external", action="append", default=[], metavar="NAME=PATH",
                        help="also evaluate a folder or zip of class folders named like the labels (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Evaluate each model file; print its scores per set."""
    from wbc.results.evaluate import evaluate_predictor  # lazy: `wbc --help` imports every command; evaluating needs torch
    from wbc.dataset.external import parse_specs
    from wbc.dataset.stress import stress_specs
    from wbc.results.ensemble import load_ensemble
    from wbc.learn.device import select_device

    device = select_device(args.device)
    external = {**stress_specs(args.stress),
                **parse_specs({k: {"path": v} for k, _, v in (e.partition("=") for e in args.external)})}
    groups = [(args.ensemble, args.models)] if args.ensemble else [(Path(p).stem, [p]) for p in args.models]
    for name, paths in groups:
        predictor = load_ensemble(paths, device=device, stain_norm=args.stain_norm, adapt=args.adapt, tta=args.tta)
        result = evaluate_predictor(predictor, args.packed, Path(args.out) / name, features_dir=args.features,
                                    batch_size=args.batch_size, title=name, external=external)
        for set_name, m in result.items():
            if isinstance(m, dict) and "accuracy" in m:
                print(f"{name} ({predictor.model_name}) {set_name}: n {m['n']}, accuracy {m['accuracy']}, "
                      f"macro-F1 {m['macro_f1']}, balanced accuracy {m['balanced_accuracy']}")
        print(f"wrote {Path(args.out) / name}/")
    return 0
