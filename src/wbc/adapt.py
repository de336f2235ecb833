"""AdaBN (Li et al. 2016): re-estimate a CNN's BatchNorm statistics on a new domain's own images.

A network trained on one lab's images normalises every layer with that lab's running means and
variances; on another lab's images those statistics are wrong. `adabn(model, x, mean, std)` returns
a copy of the model whose BatchNorm running statistics are the (cumulative) averages over the
target images `x` (unlabelled, uint8 (N, 3, S, S)); every weight, and the model given, stay unchanged.
Models without BatchNorm (GroupNorm variants, vgg16, ViT) are returned as an unchanged copy.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from wbc.train import normalise

#: Adaptation modes (params `evaluate.adapt`, `wbc predict --adapt`).
ADAPTS = ("none", "adabn")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers (1d, 2d, 3d)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adabn(model: nn.Module, x: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
          batch_size: int = 64, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of `model` (eval mode) with BatchNorm running stats re-estimated on the images `x`."""
    adapted = copy.deepcopy(model).to(device)
    layers = batchnorm_layers(adapted)
    if not layers or len(x) == 0:
        return adapted.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts equally
    adapted.eval()
    for bn in layers:
        bn.train()
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)
    for start in range(0, len(x), batch_size):
        batch = np.require(x[start:start + batch_size], dtype=np.uint8, requirements=["C", "W"])
        if len(batch) < 2 and start > 0:
            break  # a single image gives no variance; earlier batches already set the stats
        adapted(normalise(torch.from_numpy(batch).to(device), m, s))
    return adapted.eval()
