"""`wbc train`: train one model (a CNN on packed tensors, or `tavakoli_svm` on the cached features)."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("train one model: a CNN (torchvision name) on packed tensors, keeping the epoch with the best validation "
        "macro-F1, or the feature-based tavakoli_svm on the feature files")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    from wbc.learn.zoo import ALL_MODELS  # lazy: only when the parser is built, not on import

    parser.add_argument("packed", metavar="PACKED_DIR", help="packed tensors folder (meta.json, train_x.npy, ...)")
    parser.add_argument("--model", required=True, metavar="NAME", help="one of: " + ", ".join(ALL_MODELS))
    parser.add_argument("--features", default="data/processed/features", metavar="DIR",
                        help="feature files of the sets (<set>.npz), for tavakoli_svm (default: %(default)s)")
    parser.add_argument("--out", required=True, metavar="FILE", help="model file to write (e.g. models/mine.ckpt)")
    parser.add_argument("--log-dir", default=None, metavar="DIR", help="dvclive log folder (default: none)")
    parser.add_argument("--params", default="params.yaml",
                        help="params file whose `train` section gives the defaults, when it exists "
                             "(default: %(default)s; else the paper's values)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=None)
    parser.add_argument("--balance", choices=("none", "sampler", "loss"), default=None)
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start from torchvision ImageNet weights (needs internet or the torch cache)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--stain-augment", action=argparse.BooleanOptionalAction, default=None,
                        help="stain/colour/blur/JPEG/rotation augmentation (wbc.learn.augment)")
    parser.add_argument("--norm", choices=("batch", "group"), default=None, help="BatchNorm or GroupNorm")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or mps")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=1, help="training seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on training batches per epoch")


def run(args: argparse.Namespace) -> int:
    """Read the defaults, apply the flags, train, print the result."""
    from wbc.core.params import load_params  # lazy: `wbc --help` imports every command; training needs torch
    from wbc.learn.runs import train_run
    from wbc.learn.zoo import check_name

    check_name(args.model)  # fail before any work
    section = dict(load_params(args.params).get("train", {}) if Path(args.params).is_file() else {})
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
             "balance": args.balance, "pretrained": args.pretrained, "augment": args.augment, "device": args.device,
             "stain_augment": args.stain_augment, "norm": args.norm,
             "workers": args.workers, "threads": args.threads, "max_steps": args.max_steps}
    section.update({k: v for k, v in flags.items() if v is not None})
    print(train_run(args.model, args.seed, packed_dir=args.packed, features_dir=args.features, out=args.out,
                    log_dir=args.log_dir, train_params=section))
    return 0
