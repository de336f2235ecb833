"""Reinhard colour standardisation: each image's Lab statistics mapped to the training set's.

Reinhard et al. (2001): in CIE Lab each channel of an image is shifted and scaled so that its mean
and standard deviation become the target's. The target (`lab_target`) is computed at split time
from the packed training images (the mean over images of each image's per-channel Lab mean and
std; stored in meta.json as `lab_target`, and in the CNN checkpoint's params) and the mapping is
applied identically by `wbc evaluate` / the evaluate stage (params `evaluate.stain_norm`) and by
`wbc predict --stain-norm`, on the model's uint8 (N, 3, S, S) inputs (`reinhard`).
Lab conversion: OpenCV on float RGB in 0..1 (L in 0..100).
"""
from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

#: Test-time colour standardisation modes (params `evaluate.stain_norm`).
STAIN_NORMS = ("none", "reinhard")
#: Smallest std used as a divisor (flat channels are shifted, not stretched).
MIN_STD = 1e-3


def _lab(img: np.ndarray) -> np.ndarray:
    """uint8 (3, H, W) RGB -> float32 (H, W, 3) Lab."""
    rgb = np.ascontiguousarray(img.transpose(1, 2, 0), dtype=np.float32) / 255.0
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)


def lab_stats(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel Lab mean and std of one uint8 (3, H, W) image."""
    lab = _lab(img).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def lab_target(x: np.ndarray, limit: int = 5000) -> dict[str, list[float]]:
    """The target of a uint8 (N, 3, S, S) set: mean over images (evenly spaced, at most `limit`) of
    each image's Lab mean and std -> {"mean": [L, a, b], "std": [L, a, b]}."""
    if len(x) == 0:
        return {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    idx = np.unique(np.linspace(0, len(x) - 1, min(limit, len(x))).round().astype(int))
    stats = [lab_stats(np.asarray(x[i])) for i in idx]
    means, stds = np.mean([m for m, _ in stats], axis=0), np.mean([s for _, s in stats], axis=0)
    return {"mean": [float(v) for v in means], "std": [float(v) for v in stds]}


def reinhard_one(img: np.ndarray, target: Mapping[str, list[float]]) -> np.ndarray:
    """One uint8 (3, H, W) image with its Lab means/stds mapped to `target` -> uint8 (3, H, W)."""
    lab = _lab(img)
    mu, sd = lab.reshape(-1, 3).mean(axis=0), lab.reshape(-1, 3).std(axis=0)
    scale = np.asarray(target["std"], np.float32) / np.maximum(sd, MIN_STD)
    lab = (lab - mu) * scale + np.asarray(target["mean"], np.float32)
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def reinhard(x: np.ndarray, target: Mapping[str, list[float]]) -> np.ndarray:
    """Every image of a uint8 (N, 3, S, S) array standardised to `target` (a new array)."""
    out = np.empty(np.shape(x), dtype=np.uint8)
    for i in range(len(x)):
        out[i] = reinhard_one(np.asarray(x[i]), target)
    return out
