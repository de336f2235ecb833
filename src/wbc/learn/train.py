"""Training a CNN on the packed tensors (docs/design.md), as the paper did.

How it works
- Batches come from `wbc.learn.packed`: the memory-mapped `<set>_x.npy` / `<set>_y.npy`, indexed a
  whole batch at a time (no per-image Python work).
- Training batches are augmented while still uint8 on the CPU (`wbc.learn.augment`): with
  `stain_augment`, the stain jitter runs in the loader where the batch is read (in the DataLoader
  workers, in parallel, when `workers` > 0), seeded per batch (the same images whatever the number
  of workers); then random horizontal and vertical flips and a random rescale, zoom drawn from 5
  evenly spaced levels in [scale_min, scale_max] (0.9-1.1), one bilinear resize per level and
  batch; random draws come from a seeded CPU generator, so they do not depend on the device. The
  batch then travels as uint8 and becomes floats on the device (`normalise`: ImageNet mean/std
  from meta.json, one copy and two in-place passes).
- Class balancing (`balance`): `sampler` = WeightedRandomSampler (1/class count, seeded generator,
  one epoch = N draws with replacement), `loss` = CrossEntropy weighted N/(C*count), `none`.
- SGD (momentum) or Adam, StepLR; the best epoch by validation macro-F1 (sklearn, average='macro';
  earliest epoch on ties) is kept and saved as the checkpoint (`wbc.learn.models.save_checkpoint`).
- Per-epoch train/val loss and accuracy, val macro-F1 and lr are logged with dvclive
  (`<log_dir>/plots/metrics/{train,val}/*.tsv`, `<log_dir>/metrics.json`).
- Device auto = CUDA, then MPS, then CPU (`wbc.learn.device`); autocast (float16) + GradScaler and channels_last on
  CUDA only. Reproducible on CPU: python/numpy/torch seeded, deterministic algorithms requested
  (warn_only), fixed thread count when `threads` is set, and the CPU kernels pinned
  (`cpu_kernels`, wbc.learn.kernels: the same bytes on any x86-64 CPU with AVX2); the checkpoint records
  the verified kernel state under `params.kernels`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from wbc.core.errors import ConfigError, WbcError
from wbc.learn import distributed, kernels, mixstyle
from wbc.learn.augment import WIDE_SCALE, augment, mean_colour, stain_augment
from wbc.learn.device import DEVICES, seed_everything, select_device
from wbc.learn.models import build_model, check_model_name, check_norm, save_checkpoint
from wbc.learn.packed import PackedSet, balanced_sampler, loss_weights, make_loader, normalise, read_meta

OPTIMIZERS = ("sgd", "adam")
BALANCES = ("none", "sampler", "loss")


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
    white_balance: float = 0.0      # stain_augment: per-channel gains exp(U(-w, w)) (camera white balance); 0: none
    norm: str = "batch"             # batch | group (GroupNorm in place of BatchNorm, wbc.learn.models)
    lab_view_prob: float = 0.0      # each train image replaced by its lab view with this probability (wbc.learn.packed)
    mixstyle: float | None = None   # MixStyle probability per batch and layer (wbc.learn.mixstyle); None: off
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
        if not 0.0 <= float(self.white_balance) <= 1.0:
            raise ConfigError(f"train.white_balance must be in [0, 1] (a log gain); got {self.white_balance!r}")
        if not 0.0 <= float(self.lab_view_prob) <= 1.0:
            raise ConfigError(f"train.lab_view_prob must be in [0, 1]; got {self.lab_view_prob!r}")
        if self.mixstyle is not None:
            mixstyle.check_probability(self.mixstyle)
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
    from dvclive import Live  # lazy: dvclive imports dvc, slow; only a logged run needs it

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
    if cfg.mixstyle is not None:
        mixstyle.layer_names(model_name)  # a family MixStyle is not defined for fails before any work
    meta = read_meta(packed_dir)
    train_set = PackedSet(packed_dir, "train", views=float(cfg.lab_view_prob) > 0)
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
    if cfg.mixstyle is not None:  # hooks on the layers: the weights, and so the checkpoint, are the model's own
        mixstyle.attach(model, model_name, float(cfg.mixstyle), seed=cfg.seed + 3)
    trainer = Trainer(model, cfg, meta, train_set.labels, device)
    trainer.model = distributed.wrap(trainer.model, ddp, device)

    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = (balanced_sampler(train_set.labels, num_classes, gen) if cfg.balance == "sampler"
               else RandomSampler(train_set, generator=gen))
    pin = device.type == "cuda"
    # stain augmentation runs in the loader (the workers, when there are), seeded per batch
    train_loader = make_loader(train_set, cfg.batch_size, sampler=distributed.shard(sampler, ddp), workers=cfg.workers,
                               pin_memory=pin,
                               transform=partial(stain_augment, strength=float(cfg.stain_strength),
                                                 white_balance=float(cfg.white_balance))
                               if cfg.stain_augment else None,
                               transform_seed=cfg.seed + 2, view_prob=float(cfg.lab_view_prob))
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
