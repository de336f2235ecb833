"""Feeding packed tensors to a model: the memory-mapped sets, class balancing, batch loaders.

- `PackedSet` indexes the memory-mapped `<set>_x.npy` / `<set>_y.npy` (written by
  `wbc.dataset.pack`) with a whole batch of indices at once (a `BatchSampler` drives the
  DataLoader, so there is no per-image Python work).
- `make_loader(transform=...)` runs a batch augmentation where the batch is read (in the
  DataLoader workers when there are), with a generator seeded per batch from a seed drawn in
  batch order (`SeededBatchSampler`): the same images whatever the number of workers.
- `make_loader(view_prob=p)`: each image of a batch is replaced, with probability p (drawn from
  the same per-batch generator, before the transform's draws), by its lab view
  (`<name>_view_x.npy`, `wbc.dataset.pack`: the image as another lab might hand it over, through
  the same crop, so the crop's fallback paths are trained for).
- Class balancing: `balanced_sampler` (WeightedRandomSampler, 1/class count) or `loss_weights`
  (CrossEntropy weights N/(C*count)).
- `normalise`: uint8 batch -> ImageNet-normalised floats on the batch's device.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, WeightedRandomSampler

from wbc.core.errors import WbcError


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

    def __init__(self, packed_dir: str | Path, name: str, views: bool = False):
        self.x_path = Path(packed_dir) / f"{name}_x.npy"
        self.y_path = Path(packed_dir) / f"{name}_y.npy"
        self.view_path = Path(packed_dir) / f"{name}_view_x.npy" if views else None
        if not self.x_path.is_file() or not self.y_path.is_file():
            raise WbcError(f"packed set {name!r} not found in {packed_dir} ({self.x_path.name}, {self.y_path.name})")
        if self.view_path is not None and not self.view_path.is_file():
            raise WbcError(f"{self.view_path} not found: train.lab_view_prob > 0 needs the lab views "
                           "(split.lab_views: true, then dvc repro split)")
        self.name = name
        self.labels = np.load(self.y_path).astype(np.int64)
        self._x: np.ndarray | None = None
        self._v: np.ndarray | None = None
        for path, x in ((self.x_path, self._images()), (self.view_path, self._views())):
            if x is not None and (x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] != len(self.labels)):
                raise WbcError(f"{path}: expected uint8 (N, 3, S, S) with N={len(self.labels)}, got {x.dtype} {x.shape}")

    def _images(self) -> np.ndarray:
        if self._x is None:
            self._x = np.load(self.x_path, mmap_mode="r")
        return self._x

    def _views(self) -> np.ndarray | None:
        if self._v is None and self.view_path is not None:
            self._v = np.load(self.view_path, mmap_mode="r")
        return self._v

    def with_views(self, index: Any, x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
        """The batch `x` (read at `index`) with each image replaced by its lab view with probability `prob`."""
        views = self._views()
        if views is None:
            raise WbcError(f"packed set {self.name!r} was opened without its lab views")
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        swap = (torch.rand(len(idx), generator=gen) < prob).numpy()
        if swap.any():
            x = x.clone()
            x[torch.from_numpy(np.flatnonzero(swap))] = torch.from_numpy(np.ascontiguousarray(views[idx[swap]]))
        return x

    def __getstate__(self) -> dict[str, Any]:  # workers re-open the memory maps
        state = dict(self.__dict__)
        state["_x"] = state["_v"] = None
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
    """A packed set whose batches get their lab views mixed in (`view_prob`) and then go through
    `transform(x_uint8, generator)`, where they are read (in the DataLoader workers when there are
    workers), seeded by the batch's own seed."""

    def __init__(self, dataset: PackedSet, transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
                 view_prob: float = 0.0):
        self.dataset, self.transform, self.view_prob = dataset, transform, float(view_prob)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: SeededBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[index]
        gen = torch.Generator().manual_seed(index.seed)
        if self.view_prob > 0:
            x = self.dataset.with_views(index, x, self.view_prob, gen)
        return (x if self.transform is None else self.transform(x, gen)), y


def make_loader(dataset: PackedSet, batch_size: int, *, sampler: Any = None, workers: int = 0,
                drop_last: bool = False, pin_memory: bool = False,
                transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                transform_seed: int = 0, view_prob: float = 0.0) -> DataLoader:
    """DataLoader yielding whole batches read with one fancy index into the memory map.

    `transform(x, generator)`: a batch augmentation run where the batch is read (in the workers, in
    parallel, when `workers` > 0), with a generator seeded per batch from `transform_seed` in batch
    order (`SeededBatchSampler`): the same images whatever the number of workers. `view_prob`: each
    image replaced by its lab view with this probability, drawn from the same generator first.
    """
    sampler = sampler if sampler is not None else SequentialSampler(dataset)
    if transform is None and not view_prob:
        batches, data = BatchSampler(sampler, batch_size, drop_last), dataset
    else:
        batches = SeededBatchSampler(sampler, batch_size, drop_last, torch.Generator().manual_seed(transform_seed))
        data = _TransformedSet(dataset, transform, view_prob)
    return DataLoader(data, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float normalised ((x/255 - mean) / std), on x's device."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return x.to(torch.float32, copy=True).mul_(scale).sub_(shift)  # one copy, two in-place passes
