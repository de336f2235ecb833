"""The speed cost of pinning the CPU kernels (wbc.learn.kernels, params `train.cpu_kernels`).

For each level (native = nothing pinned, the baseline of the ratios; avx2 = the default; baseline =
any x86-64 CPU) a fresh process (the libraries read their setting once) pins the level, then times
training steps (forward + backward + SGD, batch 32, 64 px: the embedded pipeline's setting) and
inference batches (batch 64) of each model on seeded random images, with the same thread count.
Every level runs in the same invocation, one after another, so the ratios compare like with like.

    python benchmarks/kernels_bench.py                      # resnet18, mobilenet_v2, shufflenet_v2_x1_0
    python benchmarks/kernels_bench.py --models resnet18 --steps 10
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, sys, time
from wbc.learn import kernels
level, models, steps, threads, size = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
state = kernels.pin(level, threads)
import torch
from wbc.learn.models import build_model
out = {"state": state, "models": {}}
for name in models:
    torch.manual_seed(0)
    model = build_model(name, 5, pretrained=False, image_size=size)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(32, 3, size, size), torch.randint(0, 5, (32,))
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.train(); step(); step()  # warm-up: oneDNN builds its kernels
    t = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = (time.perf_counter() - t) / steps
    model.eval(); xe = torch.rand(64, 3, size, size)
    with torch.no_grad():
        model(xe)
        t = time.perf_counter()
        for _ in range(steps):
            model(xe)
    out["models"][name] = {"train_step_s": train_s, "infer_batch_s": (time.perf_counter() - t) / steps}
print(json.dumps(out))
"""


def run_level(level: str, models: list[str], steps: int, threads: int, size: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, level, ",".join(models), str(steps), str(threads), str(size)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{level}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2,shufflenet_v2_x1_0")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (params train.threads)")
    parser.add_argument("--size", type=int, default=64, help="image side (params split.image_size)")
    args = parser.parse_args()
    models = args.models.split(",")
    print(f"CPU {platform.machine()} {platform.processor() or ''}, {args.threads} threads, {args.size} px, "
          f"{args.steps} timed steps per model and level")
    results = {level: run_level(level, models, args.steps, args.threads, args.size)
               for level in ("native", "avx2", "baseline")}
    for level, res in results.items():
        print(f"  {level:8s} kernels: {res['state']}")
    print("\n| model | level | train step (s) | vs native | inference batch (s) | vs native |")
    print("|---|---|---:|---:|---:|---:|")
    for name in models:
        base = results["native"]["models"][name]
        for level, res in results.items():
            m = res["models"][name]
            print(f"| {name} | {level} | {m['train_step_s']:.3f} | {m['train_step_s'] / base['train_step_s']:.2f}x | "
                  f"{m['infer_batch_s']:.3f} | {m['infer_batch_s'] / base['infer_batch_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
