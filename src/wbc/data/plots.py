"""Pictures shared by the stages: labelled image grids (samples per class, duplicate groups)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wbc.data.store import ImageStore


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def image_grid(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    path: str | Path,
    *,
    cell: int = 112,
    title: str | None = None,
    captions: Sequence[Sequence[str]] | None = None,
    marks: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """Save a grid: one row per (row label, images); images are letterboxed into `cell` px squares.

    `captions[r][c]` is printed under an image; `marks[r][c]` draws a green frame (e.g. the kept
    image of a duplicate group). Deterministic output (same inputs -> same PNG bytes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    label_w = 150
    cap_h = 16 if captions else 0
    title_h = 28 if title else 0
    ncols = max((len(imgs) for _, imgs in rows), default=1) or 1
    width = label_w + ncols * (cell + 4) + 4
    height = title_h + max(len(rows), 1) * (cell + cap_h + 4) + 4
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(11)
    if title:
        draw.text((6, 6), title, fill="black", font=font)
    for r, (label, imgs) in enumerate(rows):
        y = title_h + 4 + r * (cell + cap_h + 4)
        draw.text((6, y + cell // 2 - 8), str(label), fill="black", font=font)
        for c, img in enumerate(imgs):
            x = label_w + 4 + c * (cell + 4)
            thumb = img.convert("RGB")
            thumb.thumbnail((cell, cell), Image.Resampling.BICUBIC)
            canvas.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
            if marks and marks[r][c]:
                draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=(0, 170, 0), width=3)
            if captions and c < len(captions[r]) and captions[r][c]:
                draw.text((x, y + cell + 1), captions[r][c][: max(8, cell // 6)], fill="black", font=small)
    canvas.save(path, format="PNG", optimize=False)
    return path


def class_samples(
    manifest,
    store_root: str | Path,
    path: str | Path,
    *,
    per_class: int = 8,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Grid of `per_class` random stored images per label (rows ordered by label, sources mixed).

    `manifest` is the ingest manifest (pandas DataFrame); only stored rows (`shard >= 0`) are drawn.
    The caption names the source, so real and synthetic parts can be compared at a glance.
    """
    store = ImageStore(store_root)
    stored = manifest[manifest["shard"] >= 0].sort_values("id")
    rng = np.random.default_rng(seed)
    rows, captions = [], []
    for label, group in stored.groupby("label", sort=True):
        take = group.iloc[np.sort(rng.choice(len(group), size=min(per_class, len(group)), replace=False))]
        rows.append((f"{label} ({len(group)})", [store.load_rgb(r) for _, r in take.iterrows()]))
        captions.append([str(s) for s in take["source"]])
    return image_grid(rows, path, title=title or "Random stored images per class", captions=captions)

