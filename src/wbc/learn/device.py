"""Where and how reproducibly a model runs: the device choice and the seeding of every RNG."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from wbc.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


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
