"""`wbc predict`: classify white-blood-cell images with a trained checkpoint; print the differential count."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "classify images (files, folders, zip archives) with a checkpoint -> CSV + differential count"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders (searched recursively) and .zip archives")
    parser.add_argument("--model", required=True, action="append", metavar="MODEL_FILE",
                        help="a trained model file: a CNN checkpoint or a feature model, e.g. models/headline-1.ckpt; "
                             "repeated: the mean of several CNN checkpoints' probabilities (e.g. the seeds of one "
                             "model, wbc.results.ensemble)")
    parser.add_argument("--out", default="predictions.csv", metavar="CSV",
                        help="output CSV (default: %(default)s): path, label, confidence, p_<class>..., error")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    parser.add_argument("--adapt", nargs="?", choices=("none", "adabn", "balanced"), const="balanced", default="none",
                        metavar="MODE",
                        help="re-estimate the CNN's BatchNorm statistics on the images given before predicting (use "
                             "a few dozen images or more of one lab): adabn (AdaBN), balanced (AdaBN again on a "
                             "class-balanced resample of the images, for folders in which some classes are rare, as "
                             "in blood); --adapt alone: balanced (default: none)")
    parser.add_argument("--stain-norm", choices=("none", "reinhard"), default="none",
                        help="reinhard: map each image's Lab statistics to the training set's (default: %(default)s)")
    parser.add_argument("--tta", action="store_true",
                        help="average the probabilities of each image's 8 rotations and reflections (CNNs; 8x slower)")


def run(args: argparse.Namespace) -> int:
    """Predict, write the CSV, list unreadable inputs on stderr, print the differential count.

    Exit status 1 when no image could be read, else 0.
    """
    from wbc.dataset.inputs import InputLimits  # lazy: `wbc --help` imports every command; predicting needs torch
    from wbc.apps.predict import differential_count, format_differential, predict_files, predictions_csv
    from wbc.results.ensemble import load_ensemble
    from wbc.learn.device import select_device

    predictor = load_ensemble(args.model, device=select_device(args.device), stain_norm=args.stain_norm,
                               adapt=args.adapt, tta=args.tta)
    frame = predict_files(predictor, args.paths, batch_size=args.batch_size, limits=InputLimits.from_params(),
                          adapt=args.adapt != "none")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(predictions_csv(frame), encoding="utf-8")
    bad = frame[frame["error"] != ""]
    for row in bad.itertuples(index=False):
        print(f"unreadable: {row.path}: {row.error}", file=sys.stderr)
    read = len(frame) - len(bad)
    print(f"{read} image(s) predicted by {predictor.model_name}, {len(bad)} unreadable (listed in the `error` column) -> {out}")
    if args.adapt != "none" and read and getattr(predictor, "kind", "") != "features":
        print(f"adapted to these {read} image(s): " + ("class-balanced AdaBN" if args.adapt == "balanced" else "AdaBN"))
    if getattr(predictor, "crop", None) is not None and predictor.crop.mode != "centre" and read:
        paths = frame.attrs["crop_paths"]
        fell = frame.attrs["cell_crop_fallback"]
        print(f"{predictor.crop.mode} crop: fell back in {fell} of {read} image(s) ({100.0 * fell / read:.1f} %; "
              + ", ".join(f"{p} {n}" for p, n in paths.items()) + "; no red cells measured: cell crop, "
              "no cell found: centre crop; per image: the `crop` column)")
    if read == 0:
        print("wbc predict: error: no image could be read", file=sys.stderr)
        return 1
    print(format_differential(differential_count(frame["label"].tolist(), predictor.classes)))
    return 0
