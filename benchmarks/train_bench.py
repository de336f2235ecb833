"""Training input pipeline and model throughput on this machine.

1. Loader: images/s delivered to the model (normalised, augmented float batches) by our loader
   (memory-mapped packed uint8 tensors + batched tensor augmentation, wbc.learn.train) versus the usual
   torchvision ImageFolder + PIL JPEG decoding + transforms.v2 (centre crop, resize, flips, random
   rescale 0.9-1.1, ToDtype/Normalize), on the same N real PBC images, same batch size and workers.
2. Training images/s per model (forward + backward + SGD step, a few steps) at 224 px and 64 px.

With `--stain-augment` both sides also do the generalization augmentation (train.stain_augment):
ours `wbc.learn.augment.stain_augment` (H&E stain jitter, brightness/contrast/saturation/hue, gamma, blur,
JPEG, 90-degree rotations) and the zoom widened to 0.7-1.4; the baseline the closest transforms.v2
(ColorJitter, GaussianBlur p 0.3, JPEG p 0.3, a random 90-degree rotation, RandomAffine scale
0.7-1.4; v2 has no stain jitter or gamma, so the baseline does a little less work).

Scratch files go to /tmp (the PBC images are never copied into the project). Run from the root:
    python benchmarks/train_bench.py            # writes reports/train/benchmark.md too
    python benchmarks/train_bench.py --quick --stain-augment   # the loader table with stain augmentation
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

import wbc  # noqa: F401  (first: it pins the SIMD dispatch of NumPy, OpenCV, OpenBLAS; wbc.core.dispatch)
import numpy as np
import torch

from wbc import LABELS
from wbc.learn.augment import WIDE_SCALE, augment, mean_colour, stain_augment
from wbc.learn.models import MODEL_NAMES, build_model
from wbc.dataset.pack import square_resize
from wbc.data.store import decode_image
from wbc.learn.packed import PackedSet, make_loader, normalise

ZIP = Path(os.environ.get("WBC_SHARED", "../shared")) / "data" / "pbc" / "PBC_dataset_normal_DIB.zip"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def prepare(zip_path: Path, n: int, size: int, scratch: Path) -> tuple[Path, Path]:
    """Write n JPEGs (spread over the five classes) as an ImageFolder and a packed train set."""
    folder, packed = scratch / f"jpeg{n}", scratch / f"packed{n}_{size}"
    if (packed / "train_x.npy").is_file() and folder.is_dir():
        return folder, packed
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(m for m in zf.namelist() if m.lower().endswith(".jpg") and "/." not in m
                       and m.split("/")[-2] in LABELS)
        picks = [m for label in LABELS for m in [x for x in names if x.split("/")[-2] == label][: n // len(LABELS)]]
        xs, ys = [], []
        for member in picks:
            data = zf.read(member)
            label = member.split("/")[-2]
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / Path(member).name).write_bytes(data)
            xs.append(square_resize(decode_image(data), size))
            ys.append(LABELS.index(label))
    packed.mkdir(parents=True, exist_ok=True)
    np.save(packed / "train_x.npy", np.stack(xs))
    np.save(packed / "train_y.npy", np.array(ys, dtype=np.int64))
    return folder, packed


def rate(batches, limit: int) -> float:
    """Images/s over the iterator of (x, y) float batches (at most `limit` images)."""
    t0, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - t0)


def ours(packed: Path, batch: int, workers: int, stain: bool = False):
    """Our pipeline: packed mmap -> uint8 batch (+ stain augmentation, in the loader workers when
    there are) -> flips + rescale on uint8 tensors -> normalise."""
    ds = PackedSet(packed, "train")
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    fill = mean_colour(mean)
    scale = WIDE_SCALE if stain else (0.9, 1.1)
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    loader = make_loader(ds, batch, sampler=sampler, workers=workers,  # as wbc.learn.train does: stain augmentation
                         transform=stain_augment if stain else None)  # where the batch is read (the workers)
    for x, y in loader:
        x = augment(x, gen, scale, fill=fill)
        yield normalise(x, mean, std), y


def _rot90(img: torch.Tensor) -> torch.Tensor:
    """A random 90-degree rotation (the baseline's counterpart of wbc.learn.augment.rotate90)."""
    return torch.rot90(img, int(torch.randint(0, 4, ())), dims=(-2, -1))


def baseline(folder: Path, size: int, batch: int, workers: int, stain: bool = False):
    """torchvision ImageFolder + PIL decoding + transforms.v2 doing the same steps per image."""
    from torchvision import datasets
    from torchvision.transforms import v2

    extra = [v2.ColorJitter(0.2, 0.2, 0.25, 0.05), v2.RandomApply([v2.GaussianBlur(5, (0.6, 1.2))], p=0.3),
             v2.RandomApply([v2.JPEG((40, 95))], p=0.3), v2.Lambda(_rot90)] if stain else []
    tf = v2.Compose([
        v2.PILToTensor(), v2.CenterCrop(360), v2.Resize(size, antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=0, scale=(0.7, 1.4) if stain else (0.9, 1.1)), *extra,
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
    ])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    yield from torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                           generator=torch.Generator().manual_seed(0))


def train_rate(name: str, size: int, batch: int, steps: int) -> float:
    """Training images/s of `name` at `size` px (1 warm-up step, then `steps` timed)."""
    torch.manual_seed(0)
    model = build_model(name, 5, pretrained=False, image_size=size).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--n", type=int, default=2000, help="images (default %(default)s)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--models", nargs="*", default=list(MODEL_NAMES))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--loader-threads", type=int, default=1,
                    help="torch threads while timing the loaders (default %(default)s: the main process "
                         "then mirrors a DataLoader worker, and timings are stable on a busy machine)")
    ap.add_argument("--repeats", type=int, default=3, help="loader runs per side, interleaved; the median "
                    "is reported (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="loader table only, printed (no model table, no report)")
    ap.add_argument("--stain-augment", action="store_true",
                    help="both sides add the stain/colour/blur/JPEG/rotation augmentation (train.stain_augment)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/wbc_train_bench"))
    ap.add_argument("--out", type=Path, default=Path("reports/train/benchmark.md"))
    args = ap.parse_args()
    if not args.zip.is_file():
        print(f"missing {args.zip} (the real PBC zip in ../shared)", file=sys.stderr)
        return 1
    folder, packed = prepare(args.zip, args.n, args.size, args.scratch)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.loader_threads)
    load0 = os.getloadavg()
    rows, best = [], [0.0, 0.0]
    for w in args.workers:
        runs = [(rate(ours(packed, args.batch, w, args.stain_augment), args.n),
                 rate(baseline(folder, args.size, args.batch, w, args.stain_augment), args.n))
                for _ in range(args.repeats)]
        a, b = (float(np.median([r[k] for r in runs])) for k in (0, 1))
        best = [max(best[0], a), max(best[1], b)]
        rows.append(f"| {w} | {a:,.0f} | {b:,.0f} | {a / b:.1f}x |")
        print(rows[-1], f"(runs: {', '.join(f'{x:.0f}/{y:.0f}' for x, y in runs)})", flush=True)
    load1 = os.getloadavg()
    torch.set_num_threads(threads)
    lines = ["# Training benchmark\n",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}. Load average (1/5/15 min) before the loader runs "
             f"{'/'.join(f'{v:.1f}' for v in load0)}, after {'/'.join(f'{v:.1f}' for v in load1)} "
             "(other jobs share the cores: figures are only comparable within one run). "
             "Command: `python benchmarks/train_bench.py`\n",
             f"## Loader: images/s delivered to the model ({args.n} real PBC JPEGs -> {args.size} px, batch {args.batch})\n",
             f"Both sides: {args.loader_threads} torch thread(s) in the main process, the same DataLoader workers "
             "(1 torch thread each, torch's default in workers), the same images, flips and zoom 0.9-1.1 about the "
             "centre, float32 normalised output. Ours: packed uint8 memory map, batched uint8 augmentation in the "
             "main process (as `wbc.learn.train.Trainer`), then normalisation. Baseline: `ImageFolder` + PIL decoding + "
             "transforms.v2 (PILToTensor, CenterCrop 360, Resize, RandomHorizontalFlip, RandomVerticalFlip, "
             f"RandomAffine(scale=0.9-1.1), ToDtype, Normalize) in the workers. Median of {args.repeats} interleaved "
             "runs of one pass over the images.\n",
             "| workers | ours (packed + tensor aug) | ImageFolder + PIL + v2 | ratio |", "|---|---|---|---|", *rows,
             f"\nBest configuration of each side: {best[0]:,.0f} vs {best[1]:,.0f} images/s, "
             f"{best[0] / best[1]:.1f}x."]
    print(lines[-1])
    if args.quick:
        return 0
    lines += ["", f"## Training images/s per model (SGD step, {args.steps} steps after one warm-up, "
              f"{torch.get_num_threads()} torch thread(s))\n",
              "| model | 224 px, batch 10 | 64 px, batch 32 |", "|---|---|---|"]
    for name in args.models:
        r224 = train_rate(name, 224, 10, args.steps)
        r64 = train_rate(name, 64, 32, args.steps)
        lines.append(f"| {name} | {r224:.1f} | {r64:.1f} |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
