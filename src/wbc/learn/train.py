"""Training a CNN on the packed tensors (docs/design.md), as the paper did.

How it works
- `PackedSet` indexes the memory-mapped `<set>_x.npy` / `<set>_y.npy` with a whole batch of
  indices at once (a `BatchSampler` drives the DataLoader, so there is no per-image Python work).
- Training batches are augmented while still uint8 on the CPU (`augment`): random horizontal and
  vertical flips (exact `torch.flip` on the chosen images) and a random rescale, zoom drawn from
  5 evenly spaced levels in [scale_min, scale_max] (0.9-1.1); images are grouped by level, so a
  batch costs at most one bilinear `F.interpolate` per level, computing only the kept pixels
  (zoom-in: crop the centre, then enlarge; zoom-out: shrink, then pad with the mean colour, i.e.
  ~0 after normalisation). Random draws come from a seeded CPU generator, so they do not depend
  on the device. The batch then travels as uint8 and becomes floats on the device: ImageNet
  normalisation (mean/std from meta.json) in one copy and two in-place passes.
- With `stain_augment`, `wbc.learn.augment.stain_augment` runs in the loader where the batch is read
  (in the DataLoader workers, in parallel, when `workers` > 0), before the flips and zoom, with a
  generator seeded per batch from a seed drawn in batch order (`SeededBatchSampler`): the same
  images whatever the number of workers.
- Class balancing (`balance`): `sampler` = WeightedRandomSampler (1/class count, seeded generator,
  one epoch = N draws with replacement), `loss` = CrossEntropy weighted N/(C*count), `none`.
- SGD (momentum) or Adam, StepLR; the best epoch by validation macro-F1 (sklearn, average='macro';
  earliest epoch on ties) is kept and saved as the checkpoint (`wbc.learn.models.save_checkpoint`).
- Per-epoch train/val loss and accuracy, val macro-F1 and lr are logged with dvclive
  (`<log_dir>/plots/metrics/{train,val}/*.tsv`, `<log_dir>/metrics.json`).
- Device auto = CUDA, then MPS, then CPU; autocast (float16) + GradScaler and channels_last on
  CUDA only. Reproducible on CPU: python/numpy/torch seeded, deterministic algorithms requested
  (warn_only), fixed thread count when `threads` is set, and the CPU kernels pinned
  (`cpu_kernels`, wbc.learn.kernels: the same bytes on any x86-64 CPU with AVX2); the checkpoint records
  the verified kernel state under `params.kernels`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data import WeightedRandomSampler
from tqdm import tqdm

from wbc.learn import distributed, kernels
from wbc.learn.augment import WIDE_SCALE, stain_augment
from wbc.core.errors import ConfigError, WbcError
from wbc.learn.models import build_model, check_model_name, check_norm, save_checkpoint

OPTIMIZERS = ("sgd", "adam")
BALANCES = ("none", "sampler", "loss")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (params.yaml `train`). Defaults are the paper's, except
    `pretrained` (the paper fine-tuned ImageNet weights; here off so it works offline)."""

    seed: int = 42
    epochs: int = 15
    batch_size: int = 10
    optimizer: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    step_size: int = 7
    gamma: float = 0.1
    pretrained: bool = False
    balance: str = "none"
    augment: bool = True
    stain_augment: bool = False     # wbc.learn.augment: stain/colour/blur/JPEG/rot90, zoom widened to WIDE_SCALE
    stain_strength: float = 1.0     # multiplier of stain_augment's colour ranges (2: strong)
    norm: str = "batch"             # batch | group (GroupNorm in place of BatchNorm, wbc.learn.models)
    scale_min: float = 0.9
    scale_max: float = 1.1
    workers: int = 0
    device: str = "auto"
    threads: int | None = None      # torch CPU threads (None: torch's default)
    cpu_kernels: str = kernels.DEFAULT_LEVEL  # avx2 | baseline | native: CPU kernel pinning (wbc.learn.kernels)
    max_steps: int | None = None    # cap on training batches per epoch (smoke tests, benchmarks)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.balance not in BALANCES:
            raise ConfigError(f"train.balance must be one of {', '.join(BALANCES)}; got {self.balance!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"train.device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        for name in ("epochs", "batch_size", "step_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be >= 1; got {getattr(self, name)!r}")
        if not float(self.lr) > 0:
            raise ConfigError(f"train.lr must be > 0; got {self.lr!r}")
        if int(self.workers) < 0:
            raise ConfigError(f"train.workers must be >= 0; got {self.workers!r}")
        check_norm(self.norm)
        kernels.check_level(self.cpu_kernels)
        if not 0 < float(self.stain_strength) <= 4:
            raise ConfigError(f"train.stain_strength must be in (0, 4]; got {self.stain_strength!r}")
        if not 0 < float(self.scale_min) <= float(self.scale_max):
            raise ConfigError("train.scale_min/scale_max must satisfy 0 < scale_min <= scale_max")

    @classmethod
    def from_params(cls, section: dict[str, Any] | None, **overrides: Any) -> "TrainConfig":
        """Build from a params `train` section (unknown keys -> ConfigError) plus overrides."""
        values = dict(section or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown train params: {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (checkpoint `params`, dvclive params)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What `train_model` returns."""

    checkpoint: Path
    best_epoch: int
    val_macro_f1: float
    history: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- data

def read_meta(packed_dir: str | Path) -> dict[str, Any]:
    """Read `<packed_dir>/meta.json` (WbcError when missing: run the split stage first)."""
    path = Path(packed_dir) / "meta.json"
    if not path.is_file():
        raise WbcError(f"packed tensors not found: {path} (run the split stage: dvc repro split)")
    return json.loads(path.read_text(encoding="utf-8"))


class PackedSet(Dataset):
    """One packed set (`<name>_x.npy` uint8 NCHW, `<name>_y.npy` int64), memory-mapped.

    Indexed with a list of indices -> (uint8 tensor (B, 3, S, S), int64 tensor (B,)). The arrays
    are opened lazily so DataLoader workers each map the file instead of pickling the data.
    """

    def __init__(self, packed_dir: str | Path, name: str):
        self.x_path = Path(packed_dir) / f"{name}_x.npy"
        self.y_path = Path(packed_dir) / f"{name}_y.npy"
        if not self.x_path.is_file() or not self.y_path.is_file():
            raise WbcError(f"packed set {name!r} not found in {packed_dir} ({self.x_path.name}, {self.y_path.name})")
        self.name = name
        self.labels = np.load(self.y_path).astype(np.int64)
        self._x: np.ndarray | None = None
        x = self._images()
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] != len(self.labels):
            raise WbcError(f"{self.x_path}: expected uint8 (N, 3, S, S) with N={len(self.labels)}, got {x.dtype} {x.shape}")

    def _images(self) -> np.ndarray:
        if self._x is None:
            self._x = np.load(self.x_path, mmap_mode="r")
        return self._x

    def __getstate__(self) -> dict[str, Any]:  # workers re-open the memory map
        state = dict(self.__dict__)
        state["_x"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self._images().shape[-1])

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        x = np.ascontiguousarray(self._images()[idx])
        return torch.from_numpy(x), torch.from_numpy(self.labels[idx])


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class (length `num_classes`)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def loss_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """CrossEntropy class weights N / (C * count); 0 for classes absent from `labels`."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sampler(labels: np.ndarray, num_classes: int, generator: torch.Generator) -> WeightedRandomSampler:
    """Draw len(labels) indices with replacement, each class equally likely on average."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    per_image = 1.0 / counts[np.asarray(labels, dtype=np.int64)]
    return WeightedRandomSampler(torch.as_tensor(per_image, dtype=torch.double), num_samples=len(labels),
                                 replacement=True, generator=generator)


class SeededBatch(list):
    """A batch of dataset indices carrying the seed of its augmentation draws (pickled with it to
    the DataLoader workers)."""

    def __init__(self, indices: Any, seed: int):
        super().__init__(indices)
        self.seed = seed


class SeededBatchSampler(BatchSampler):
    """BatchSampler whose batches carry a seed drawn, in batch order, from `generator` (in the main
    process): a batch transform seeded by it draws the same numbers whichever worker runs it, so the
    results do not depend on the number of workers."""

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool, generator: torch.Generator):
        super().__init__(sampler, batch_size, drop_last)
        self.generator = generator

    def __iter__(self) -> Any:
        for batch in super().__iter__():
            yield SeededBatch(batch, int(torch.randint(0, 2**62, (), generator=self.generator)))


class _TransformedSet(Dataset):
    """A packed set whose batches go through `transform(x_uint8, generator)` where they are read (in
    the DataLoader workers when there are workers), seeded by the batch's own seed."""

    def __init__(self, dataset: PackedSet, transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: SeededBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[index]
        return self.transform(x, torch.Generator().manual_seed(index.seed)), y


def make_loader(dataset: PackedSet, batch_size: int, *, sampler: Any = None, workers: int = 0,
                drop_last: bool = False, pin_memory: bool = False,
                transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                transform_seed: int = 0) -> DataLoader:
    """DataLoader yielding whole batches read with one fancy index into the memory map.

    `transform(x, generator)`: a batch augmentation run where the batch is read (in the workers, in
    parallel, when `workers` > 0), with a generator seeded per batch from `transform_seed` in batch
    order (`SeededBatchSampler`): the same images whatever the number of workers.
    """
    sampler = sampler if sampler is not None else SequentialSampler(dataset)
    if transform is None:
        batches, data = BatchSampler(sampler, batch_size, drop_last), dataset
    else:
        batches = SeededBatchSampler(sampler, batch_size, drop_last, torch.Generator().manual_seed(transform_seed))
        data = _TransformedSet(dataset, transform)
    return DataLoader(data, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0)


# ----------------------------------------------------------------------------- tensors

def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float normalised ((x/255 - mean) / std), on x's device."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return x.to(torch.float32, copy=True).mul_(scale).sub_(shift)  # one copy, two in-place passes


SCALE_LEVELS = 5  # discrete zoom factors in [scale_min, scale_max]: one resize call per level and batch


def scale_levels(scale: tuple[float, float], levels: int = SCALE_LEVELS) -> list[float]:
    """The discrete zoom factors drawn by `augment` (evenly spaced, one when min == max)."""
    lo, hi = float(scale[0]), float(scale[1])
    return [lo] if lo == hi else [lo + (hi - lo) * k / (levels - 1) for k in range(levels)]


def _fill_value(fill: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`fill` (a scalar or one value per channel) as a (1, C, 1, 1) tensor of x's dtype and device."""
    value = torch.as_tensor(fill, dtype=torch.float32).reshape(-1)
    if x.dtype == torch.uint8:
        value = value.round().clamp_(0, 255)
    return value.to(device=x.device, dtype=x.dtype).expand(x.shape[1]).view(1, -1, 1, 1)


def _rescale(x: torch.Tensor, s: float, fill: torch.Tensor) -> torch.Tensor:
    """Zoom a (b, C, S, S) batch by `s` about the centre, back to S px (bilinear, no antialias).

    s > 1: the central round(S/s) px are cropped, then enlarged to S (only pixels that are kept
    are computed). s < 1: the image shrinks to round(S*s) px, centred on a `fill` background.
    """
    size = x.shape[-1]
    if s > 1:
        c = max(1, round(size / s))
        if c == size:
            return x
        a = (size - c) // 2
        x = x[:, :, a:a + c, a:a + c].contiguous()  # a contiguous input takes the fast kernel
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    m = max(1, round(size * s))
    if m == size:
        return x
    out = fill.expand(x.shape[0], -1, size, size).clone()
    a = (size - m) // 2
    out[:, :, a:a + m, a:a + m] = F.interpolate(x, size=(m, m), mode="bilinear", align_corners=False,
                                                antialias=False)
    return out


def augment(x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.9, 1.1),
            fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Random h/v flips and rescale of a (B, C, S, S) batch (uint8 or float); returns a new tensor.

    Each image gets its own draws (from the CPU `generator`, so they do not depend on the device):
    flip left-right and up-down with probability 1/2 (exact, `torch.flip` on the chosen images),
    zoom by one of `scale_levels(scale)` (uniform) about the centre: s > 1 crops, s < 1 pads with
    `fill` (0 = the mean colour of a normalised batch; pass the mean colour for a uint8 batch).
    Images are grouped by zoom level, so there is one bilinear `interpolate` per level, and a uint8
    batch stays uint8 (the fast, 4x smaller path: normalise afterwards; CPU only, CUDA has no
    uint8 bilinear kernel).
    """
    b = x.shape[0]
    levels = scale_levels(scale)
    flips = torch.randint(0, 2, (b, 2), generator=generator).tolist()
    pick = torch.randint(0, len(levels), (b,), generator=generator)
    out = torch.empty_like(x)
    for i, (left_right, up_down) in enumerate(flips):  # per-image copies: cheaper than index_put
        dims = [d for d, on in ((1, up_down), (2, left_right)) if on]  # dims of one (C, S, S) image
        out[i].copy_(x[i].flip(dims) if dims else x[i])
    value = _fill_value(fill, x)
    for k, s in enumerate(levels):
        idx = (pick == k).nonzero().flatten()
        if abs(s - 1.0) < 1e-9 or not len(idx):
            continue
        scaled = _rescale(out.index_select(0, idx.to(x.device)), s, value)
        for j, i in enumerate(idx.tolist()):
            out[i].copy_(scaled[j])
    return out


def mean_colour(mean: torch.Tensor) -> torch.Tensor:
    """The dataset mean colour on the uint8 scale (0-255): the padding of uint8 augmentation."""
    return (mean.detach().float().cpu() * 255.0).round()


# ----------------------------------------------------------------------------- runtime

def select_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then MPS, then CPU. An explicit unavailable device -> ConfigError."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ConfigError(f"train.device={name} but no {name.upper()} device is available (use auto or cpu)")
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    return torch.device(name)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed python, numpy and torch; request deterministic algorithms; optionally fix threads."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(int(threads))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or Adam."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Trainer:
    """One model's training loop on one device (see the module docstring)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, meta: dict[str, Any], train_labels: np.ndarray,
                 device: torch.device):
        self.cfg, self.device = cfg, device
        self.cuda = device.type == "cuda"
        self.model = model.to(device, memory_format=torch.channels_last if self.cuda else torch.contiguous_format)
        self.mean = torch.tensor(meta["mean"], dtype=torch.float32, device=device)
        self.std = torch.tensor(meta["std"], dtype=torch.float32, device=device)
        weight = loss_weights(train_labels, len(meta["classes"])).to(device) if cfg.balance == "loss" else None
        self.criterion = nn.CrossEntropyLoss(weight=weight)
        self.eval_criterion = nn.CrossEntropyLoss()
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.fill = mean_colour(self.mean)  # uint8 padding of the zoom-out augmentation
        self.scale = WIDE_SCALE if cfg.stain_augment else (cfg.scale_min, cfg.scale_max)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = normalise(x.to(self.device, non_blocking=True), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda)

    def train_epoch(self, loader: DataLoader, desc: str) -> dict[str, float]:
        """One pass over `loader` (at most cfg.max_steps batches): mean loss and accuracy."""
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=None)):
            if self.cfg.max_steps is not None and step >= self.cfg.max_steps:
                break
            y = y.to(self.device, non_blocking=True)
            if self.cfg.augment:  # on the uint8 CPU batch: 4x less data to resize and to transfer
                x = augment(x, self.aug_gen, self.scale, fill=self.fill)
            x = self._inputs(x)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                logits = self.model(x)
                loss = self.criterion(logits, y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        self.scheduler.step()
        return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1)}

    @torch.no_grad()
    def predict(self, loader: DataLoader) -> tuple[np.ndarray, np.ndarray, float]:
        """(true labels, predicted labels, mean unweighted loss) over `loader`."""
        self.model.eval()
        ys, preds, loss_sum = [], [], 0.0
        for x, y in loader:
            y = y.to(self.device)
            with self._autocast():
                logits = self.model(self._inputs(x))
            loss_sum += float(self.eval_criterion(logits.float(), y)) * len(y)
            ys.append(y.cpu().numpy())
            preds.append(logits.argmax(1).cpu().numpy())
        y_true = np.concatenate(ys) if ys else np.zeros(0, np.int64)
        y_pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
        return y_true, y_pred, loss_sum / max(len(y_true), 1)

    def validate(self, loader: DataLoader) -> dict[str, float]:
        """Validation loss, accuracy and macro-F1."""
        y_true, y_pred, loss = self.predict(loader)
        if len(y_true) == 0:
            return {"loss": float("nan"), "acc": float("nan"), "macro_f1": float("nan")}
        return {"loss": loss, "acc": float((y_true == y_pred).mean()),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}

    def state_copy(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the current weights."""
        return {k: v.detach().to("cpu", copy=True) for k, v in distributed.unwrap(self.model).state_dict().items()}


def input_params(meta: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must know to prepare inputs as the packed data was: the crop (`crop`,
    `cell_fraction`, `rbc_span`, wbc.cells.cellcrop) and the training set's Lab statistics (`lab_target`,
    wbc.cells.stainnorm)."""
    keys = ("crop", "cell_fraction", "rbc_span", "lab_target")
    return {k: meta[k] for k in keys if k in meta}


def _open_live(log_dir: str | Path | None) -> Any:
    """A dvclive logger writing into `log_dir` (no dvc.yaml, no experiment), or None."""
    if log_dir is None:
        return None
    from dvclive import Live

    return Live(str(log_dir), dvcyaml=None, save_dvc_exp=False, report=None)


def _log_epoch(live: Any, train: dict[str, float], val: dict[str, float], lr: float) -> None:
    if live is None:
        return
    for split, values in (("train", train), ("val", val)):
        for key, value in values.items():
            live.log_metric(f"{split}/{key}", float(value))
    live.log_metric("lr", float(lr))
    live.next_step()


def train_model(model_name: str, packed_dir: str | Path, cfg: TrainConfig, out: str | Path,
                log_dir: str | Path | None = None) -> TrainResult:
    """Train `model_name` on `<packed_dir>` train, select on val, save the best checkpoint to `out`."""
    check_model_name(model_name)
    meta = read_meta(packed_dir)
    train_set = PackedSet(packed_dir, "train")
    val_set = PackedSet(packed_dir, "val")
    image_size = int(meta["image_size"])
    if train_set.image_size != image_size:
        raise WbcError(f"{train_set.x_path} holds {train_set.image_size} px images, meta.json says {image_size}")
    if len(train_set) == 0:
        raise WbcError(f"the train set in {packed_dir} is empty")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        kernel_state = kernels.pin(cfg.cpu_kernels)  # before the first tensor operation of a fresh process
        seed_everything(cfg.seed, cfg.threads)
        return _train(model_name, cfg, out, log_dir, meta, train_set, val_set, kernel_state)
    finally:  # leave the process's torch settings as they were
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(model_name: str, cfg: TrainConfig, out: str | Path, log_dir: str | Path | None, meta: dict[str, Any],
           train_set: PackedSet, val_set: PackedSet, kernel_state: dict[str, str]) -> TrainResult:
    """The body of `train_model` (after validation and seeding)."""
    num_classes, image_size = len(meta["classes"]), int(meta["image_size"])
    ddp = distributed.env_from()  # torchrun: DistributedDataParallel (wbc.learn.distributed); else a no-op
    device = distributed.setup(ddp, select_device(cfg.device))
    model = build_model(model_name, num_classes, pretrained=cfg.pretrained, image_size=image_size, norm=cfg.norm)
    trainer = Trainer(model, cfg, meta, train_set.labels, device)
    trainer.model = distributed.wrap(trainer.model, ddp, device)

    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = (balanced_sampler(train_set.labels, num_classes, gen) if cfg.balance == "sampler"
               else RandomSampler(train_set, generator=gen))
    pin = device.type == "cuda"
    # stain augmentation runs in the loader (the workers, when there are), seeded per batch
    train_loader = make_loader(train_set, cfg.batch_size, sampler=distributed.shard(sampler, ddp), workers=cfg.workers,
                               pin_memory=pin,
                               transform=partial(stain_augment, strength=float(cfg.stain_strength))
                               if cfg.stain_augment else None,
                               transform_seed=cfg.seed + 2)
    val_loader = make_loader(val_set, max(64, cfg.batch_size), workers=cfg.workers, pin_memory=pin)

    live = _open_live(distributed.main_only(ddp, log_dir))
    if live is not None:
        live.log_params({"model": model_name, **{k: v for k, v in cfg.to_dict().items() if v is not None}})
    history: list[dict[str, float]] = []
    best_f1, best_epoch, best_state = -1.0, 0, None
    has_val = len(val_set) > 0  # without a validation set the last epoch is kept
    for epoch in range(1, cfg.epochs + 1):
        lr = trainer.optimizer.param_groups[0]["lr"]
        tr = trainer.train_epoch(train_loader, desc=f"{model_name} epoch {epoch}/{cfg.epochs}")
        va = trainer.validate(val_loader)
        _log_epoch(live, tr, va, lr)
        history.append({"epoch": epoch, **{f"train_{k}": v for k, v in tr.items()},
                        **{f"val_{k}": v for k, v in va.items()}})
        if best_state is None or not has_val or va["macro_f1"] > best_f1:  # ties: earliest epoch
            best_f1, best_epoch, best_state = va["macro_f1"], epoch, trainer.state_copy()
        tqdm.write(f"{model_name} epoch {epoch}: train loss {tr['loss']:.4f} acc {tr['acc']:.3f} | "
                   f"val loss {va['loss']:.4f} acc {va['acc']:.3f} macro-F1 {va['macro_f1']:.3f}")
    if live is not None:
        live.end()
    trainer.model = distributed.unwrap(trainer.model)
    trainer.model.load_state_dict(best_state)
    val_f1 = float(best_f1)
    params = {"model": model_name, **{k: v for k, v in cfg.to_dict().items() if v is not None},
              **input_params(meta), "kernels": kernel_state}
    path = Path(out)
    if ddp.is_main:  # one checkpoint, written by rank 0
        path = save_checkpoint(out, trainer.model, model_name=model_name, classes=list(meta["classes"]),
                               image_size=image_size, mean=meta["mean"], std=meta["std"], params=params,
                               best_epoch=best_epoch, val_macro_f1=val_f1)
    distributed.barrier(ddp)
    distributed.teardown(ddp)
    return TrainResult(checkpoint=path, best_epoch=best_epoch, val_macro_f1=val_f1, history=history)
