"""Benchmark of the dedup stage: quality (both modes) and speed against the paper's reference script.

Quality: real PBC cells re-imaged as in a smear (the same cell in an overlapping field: shift up to
12 % of the crop, zoom +-10 %, Gaussian blur sigma up to 1.6, exposure +-10 %, JPEG quality 70-95),
mixed with >= 2,000 distinct real cells; pair recall / precision of the final groups, and distinct
cells that lost all their copies. Speed: the reference (imagehash per image on one core + a Python
double loop over pairs) vs ours (parallel features + vectorised blocked search + verification) on
the real PBC five classes, and the candidate search alone for 1k..1M random codes.

    python benchmarks/dedup_bench.py [--shared ../shared] [--distinct 2000] [--groups 300] [--quick]

Prints tables and writes them to reports/dedup/benchmark.md.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from wbc import LABELS, dedup

ROOT = Path(__file__).resolve().parents[1]
CROP = 240  # the base view: centre crop of a 360 px PBC image, leaving room to shift and zoom


# --------------------------------------------------------------------------- data


def pbc_members(zip_path: Path) -> dict[str, bytes]:
    """Bytes of the five WBC classes of the real PBC zip (key: class/file), sorted."""
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(n for n in z.namelist() if n.count("/") == 2 and n.split("/")[1] in LABELS
                       and n.lower().endswith(".jpg") and not n.split("/")[2].startswith("."))
        return {n.split("/", 1)[1]: z.read(n) for n in names}


def view(rgb: np.ndarray, dx: float = 0.0, dy: float = 0.0, zoom: float = 1.0, blur: float = 0.0,
         gain: float = 1.0, quality: int = 95) -> bytes:
    """A CROP x CROP field of `rgb` centred at (centre + dx, dy) px, magnified by `zoom`, blurred,
    exposure-scaled and JPEG-encoded: one (re-)imaging of the cell."""
    h, w = rgb.shape[:2]
    cx, cy = (w - 1) / 2 + dx, (h - 1) / 2 + dy
    c = (CROP - 1) / 2
    m = np.array([[zoom, 0, c - zoom * cx], [0, zoom, c - zoom * cy]], np.float64)
    out = cv2.warpAffine(rgb, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    if gain != 1.0:
        out = np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def reimage_set(members: dict[str, bytes], n_distinct: int, n_groups: int, seed: int = 0,
                ) -> tuple[dict[str, bytes], dict[str, int]]:
    """Planted benchmark: `n_groups` cells seen 2-3 times (re-imaged) + `n_distinct` cells seen once.

    Byte-identical sources are used once. Returns (key -> JPEG bytes, key -> true cell id).
    """
    rng = np.random.default_rng(seed)
    uniq: dict[str, str] = {}
    for k, data in members.items():
        uniq.setdefault(__import__("hashlib").sha256(data).hexdigest(), k)
    keys = sorted(uniq.values())
    pick = rng.choice(len(keys), size=n_distinct + n_groups, replace=False)
    images: dict[str, bytes] = {}
    truth: dict[str, int] = {}
    for cell, idx in enumerate(pick):
        rgb = np.asarray(Image.open(io.BytesIO(members[keys[idx]])).convert("RGB"))
        copies = 1 if cell < n_distinct else int(rng.integers(2, 4))
        for c in range(copies):
            if c == 0:
                params = {"quality": int(rng.integers(85, 96))}
            else:
                params = {"dx": rng.uniform(-0.12, 0.12) * CROP, "dy": rng.uniform(-0.12, 0.12) * CROP,
                          "zoom": rng.uniform(0.9, 1.1), "blur": rng.uniform(0, 1.6), "gain": rng.uniform(0.9, 1.1),
                          "quality": int(rng.integers(70, 96))}
            key = f"cell{cell:05d}_{c}.jpg"
            images[key] = view(rgb, **params)
            truth[key] = cell
    return images, truth


# --------------------------------------------------------------------------- quality


def quality(result: dedup.GroupResult, keys: list[str], truth: dict[str, int]) -> dict[str, float]:
    """Pair recall/precision of the final groups (all pairs within a predicted group) and lost cells."""
    t = np.array([truth[k] for k in keys])
    g = result.group

    def pairs_same(a: np.ndarray) -> set[tuple[int, int]]:
        out = set()
        for v in np.unique(a):
            m = np.flatnonzero(a == v)
            out.update((int(x), int(y)) for xi, x in enumerate(m) for y in m[xi + 1:])
        return out

    tp_set, pred = pairs_same(t), pairs_same(g)
    tp = len(tp_set & pred)
    kept_cells = set(t[result.keep].tolist())
    lost = len(set(t.tolist()) - kept_cells)
    return {"true_pairs": len(tp_set), "predicted_pairs": len(pred), "tp": tp,
            "recall": tp / max(len(tp_set), 1), "precision": tp / max(len(pred), 1),
            "lost_cells": lost, "cells": len(set(t.tolist())), "kept": int(result.keep.sum())}


def candidate_quality(f: dedup.Features, mode: str, truth: dict[str, int]) -> dict[str, float]:
    """Recall and precision of the candidate pairs alone (before verification)."""
    p = dedup._params(mode, {})
    df = dedup.candidate_pairs(f, mode, p)
    t = np.array([truth[k] for k in f.keys])
    same = t[df["i"].to_numpy()] == t[df["j"].to_numpy()]
    n_true = int(sum(c * (c - 1) // 2 for c in np.unique(t, return_counts=True)[1]))
    return {"candidates": len(df), "cand_recall": int(same.sum()) / max(n_true, 1),
            "cand_precision": int(same.sum()) / max(len(df), 1)}
