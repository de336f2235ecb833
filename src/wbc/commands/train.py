"""`wbc train`: train one model on packed tensors and save the best checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train a CNN (torchvision name) on packed tensors; keep the epoch with the best validation macro-F1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    from wbc.models import MODEL_NAMES

    parser.add_argument("packed", metavar="PACKED_DIR", help="packed tensors folder (meta.json, train_x.npy, ...)")
    parser.add_argument("--model", required=True, metavar="NAME", help="one of: " + ", ".join(MODEL_NAMES))
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write (e.g. model.pt)")
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
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or mps")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on training batches per epoch")


def run(args: argparse.Namespace) -> int:
    """Read the defaults, apply the flags, train, print the result."""
    from wbc.models import check_model_name
    from wbc.params import load_params
    from wbc.train import TrainConfig, train_model

    check_model_name(args.model)  # fail before any work
    section = load_params(args.params).get("train", {}) if Path(args.params).is_file() else {}
    cfg = TrainConfig.from_params(section, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  optimizer=args.optimizer, balance=args.balance, pretrained=args.pretrained,
                                  augment=args.augment, device=args.device, workers=args.workers,
                                  seed=args.seed, threads=args.threads, max_steps=args.max_steps)
    result = train_model(args.model, args.packed, cfg, args.out, log_dir=args.log_dir)
    print(f"{args.model}: best epoch {result.best_epoch}, val macro-F1 {result.val_macro_f1:.4f} -> {result.checkpoint}")
    return 0
