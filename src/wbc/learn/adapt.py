"""AdaBN (Li et al. 2016): re-estimate a CNN's BatchNorm statistics on a new domain's own images.

A network trained on one lab's images normalises every layer with that lab's running means and
variances; on another lab's images those statistics are wrong. `adabn(model, x, mean, std)` returns
a copy of the model whose BatchNorm running statistics are the pooled mean and variance of each
layer's input over all the target images `x` (unlabelled, uint8 (N, 3, S, S)); every weight, and the
model given, stay unchanged. Models without BatchNorm (GroupNorm variants, vgg16, ViT) are returned as
an unchanged copy.

The images are visited in a seeded random order: test sets and class folders come sorted by class, and
batches of one class would give each layer class-specific statistics. The statistics are pooled over
all images (sums of x and x^2 per channel, collected by forward pre-hooks), not averaged per batch: an
average of per-batch variances leaves out the variance between batches.

Class-balanced AdaBN (`adapt: balanced`). The statistics of a set depend on its mix of classes, and
the network was trained on class-balanced batches (the balanced sampler): a lab's folder is rarely
balanced (blood: about 60 % neutrophils, 30 % lymphocytes, 1 % basophils), so plain AdaBN normalises
every layer with the statistics of mostly neutrophils. `balanced` adapts twice: AdaBN on the images as
given, a prediction of each image, then AdaBN again on a resample of the images drawn with replacement
(`class_balanced_rows`, `BALANCED_DRAWS` draws per image, seeded) in which every predicted class has
the same share. On a balanced set it is plain AdaBN up to the resampling; on a folder of one class,
too. Measured on LISC drawn to a blood differential and to a lymphocytosis
(`benchmarks/adabn_label_shift.py`, reports/adabn_label_shift.md): plain AdaBN scores 6 and 14 points
below the statistics of the balanced set, the balanced resample wins 3.6 and 7.6 of them back.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from wbc.learn.packed import normalise

#: Adaptation modes (params `evaluate.adapt`, `wbc predict --adapt`).
ADAPTS = ("none", "adabn", "balanced")
#: Images drawn (with replacement) per image given, for the class-balanced re-estimation.
BALANCED_DRAWS = 2


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers (1d, 2d, 3d)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adabn(model: nn.Module, x: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
          batch_size: int = 64, device: torch.device | str = "cpu", seed: int = 0,
          rows: np.ndarray | None = None) -> nn.Module:
    """A copy of `model` (eval mode) with BatchNorm running stats re-estimated on the images `x`, or on
    the images `x[rows]` (indices, repeats allowed: a resample is read from `x`, never copied whole)."""
    adapted = copy.deepcopy(model).to(device)
    layers = batchnorm_layers(adapted)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
    if not layers or len(rows) < 2:
        return adapted.eval()
    sums: dict[int, list] = {id(bn): [0, 0.0, 0.0] for bn in layers}  # count, sum x, sum x^2 (float64)

    def collect(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        t = inputs[0].detach().to(torch.float64).transpose(0, 1).reshape(inputs[0].shape[1], -1)
        acc = sums[id(bn)]
        acc[0] += t.shape[1]
        acc[1] = acc[1] + t.sum(dim=1)
        acc[2] = acc[2] + (t * t).sum(dim=1)

    hooks = [bn.register_forward_pre_hook(collect) for bn in layers]
    adapted.eval()
    for bn in layers:
        bn.train()  # each layer normalises with its batch statistics, as in training
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)
    order = rows[np.random.default_rng(seed).permutation(len(rows))]
    try:
        for start in range(0, len(order), batch_size):
            batch_rows = np.sort(order[start:start + batch_size])
            if len(batch_rows) < 2:
                break  # a single image gives no batch variance; it is left out
            batch = np.require(x[batch_rows], dtype=np.uint8, requirements=["C", "W"])
            adapted(normalise(torch.from_numpy(batch).to(device), m, s))
    finally:
        for h in hooks:
            h.remove()
    for bn in layers:
        n, sx, sxx = sums[id(bn)]
        mu = sx / n
        var = (sxx / n - mu * mu).clamp_min(0) * (n / max(n - 1, 1))
        bn.running_mean.copy_(mu.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return adapted.eval()


def class_balanced_rows(labels: Sequence[int] | np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`size` row indices (sorted) drawn with replacement from `labels` (one predicted class per image),
    each class present with the same expected share of the draws."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"class_balanced_rows: need a non-empty 1-d array of labels, got shape {labels.shape}")
    classes, counts = np.unique(labels, return_counts=True)
    weight = 1.0 / counts[np.searchsorted(classes, labels)]
    return np.sort(np.random.default_rng(seed).choice(len(labels), size=int(size), p=weight / weight.sum()))
