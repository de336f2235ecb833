"""MixStyle (Zhou, Yang, Qiao & Xiang, ICLR 2021): another lab's "style" made up in feature space.

The early feature maps of a CNN carry an image's style (its stain, lamp, camera) in their
per-channel means and standard deviations over the image, and its content (the cell) in the
normalised maps. During training MixStyle replaces, with probability `p` per batch and layer, each
image's statistics by a mix of its own and those of another image of the batch:

    x' = sigma_mix * (x - mu) / sigma + mu_mix,   mu_mix = lam mu + (1 - lam) mu[perm],
                                                  sigma_mix = lam sigma + (1 - lam) sigma[perm],

lam ~ Beta(ALPHA, ALPHA) per image and perm a random permutation of the batch (the statistics are
taken out of the gradient, as in the paper). With one training lab, the mixed styles are those of
the stain-augmented batch (`wbc.learn.augment`): new combinations of them, at the feature level the
pixel-level jitter does not reach. Nothing changes at evaluation (`module.training` is False) nor in
the checkpoint: the layers are hooked (`torch.nn.Module.register_forward_hook`), the weights are
the model's own, and a saved model loads and predicts without this module.

Params `train.mixstyle` (the probability p; null = off); the hooked layers: the first two residual
stages of the ResNets (the paper's choice, `LAYERS`). Draws come from generators seeded from the
training seed, so a seed gives the same run.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from wbc.core.errors import ConfigError

#: Beta(ALPHA, ALPHA) mixing weights (the paper's 0.1: most weights near 0 or 1, some in between).
ALPHA = 0.1
#: The layers whose outputs are mixed, per model family (a name prefix of `wbc.learn.models`).
LAYERS = {"resnet": ("layer1", "layer2")}
#: Added to the variance before the square root.
EPS = 1e-6


def check_probability(p: float) -> float:
    """`p` as a float, or ConfigError when it is not a probability (params `train.mixstyle`)."""
    if not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"train.mixstyle must be a probability in [0, 1] (null: off); got {p!r}")
    return float(p)


class MixStyle:
    """The forward hook of one or more layers (see the module docstring)."""

    def __init__(self, p: float, seed: int, alpha: float = ALPHA):
        self.p, self.alpha = check_probability(p), float(alpha)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.rng = np.random.default_rng(int(seed))
        self.mixed = 0  # batches x layers mixed so far (a test can see it work)

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training or output.shape[0] < 2:
            return output
        if float(torch.rand((), generator=self.gen)) >= self.p:
            return output
        b = output.shape[0]
        perm = torch.randperm(b, generator=self.gen).to(output.device)
        lam = torch.as_tensor(self.rng.beta(self.alpha, self.alpha, size=(b, 1, 1, 1)), dtype=output.dtype,
                              device=output.device)
        mu = output.mean(dim=(2, 3), keepdim=True).detach()
        sigma = (output.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
        normed = (output - mu) / sigma
        self.mixed += 1
        return normed * (lam * sigma + (1 - lam) * sigma[perm]) + (lam * mu + (1 - lam) * mu[perm])


def layer_names(model_name: str) -> tuple[str, ...]:
    """The names of the layers MixStyle hooks in `model_name` (ConfigError for a family it lacks)."""
    for prefix, names in LAYERS.items():
        if model_name.startswith(prefix):
            return names
    raise ConfigError(f"train.mixstyle is defined for {', '.join(f'{k}*' for k in LAYERS)} models; "
                      f"got {model_name!r} (set train.mixstyle: null)")


def attach(model: nn.Module, model_name: str, p: float, seed: int) -> MixStyle:
    """Hook MixStyle (probability `p`) on the layers of `layer_names(model_name)`; returns the hook."""
    hook = MixStyle(p, seed)
    modules = dict(model.named_modules())
    for name in layer_names(model_name):
        if name not in modules:
            raise ConfigError(f"train.mixstyle: {model_name} has no layer {name!r}")
        modules[name].register_forward_hook(hook)
    return hook
