"""Stage `train@<model>-<seed>` (and `train_headline@<seed>`): train one model with one seed.

dvc.yaml writes the model, the seed and every path on the command line; the params file gives the
`train` section (CNNs). Outputs: the model file and its log folder.
"""
from __future__ import annotations

import argparse

from wbc.core.params import load_params, run_stage
from wbc.learn.runs import train_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--model", "--packed", "--features", "--out", "--log"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    summary = train_run(args.model, args.seed, packed_dir=args.packed, features_dir=args.features,
                        out=args.out, log_dir=args.log, train_params=load_params().get("train"))
    print(f"train: {summary}")
    return 0


if __name__ == "__main__":
    run_stage("train", main)
