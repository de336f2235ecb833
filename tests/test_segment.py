"""Nucleus segmentation (wbc.cells.segment), its figure (wbc.cells.segment_plot) and `wbc segment`."""
from __future__ import annotations

import argparse
import csv
import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from wbc import LABELS
from wbc.apps.commands import segment as segment_cmd
from wbc.cells.features import FEATURE_NAMES, shape_features
from wbc.cells.segment import (BAD_INPUT, FLAGS, NO_NUCLEUS, colour_balance, convex_hull_mask, fill_small_holes,
                         join_flags, segment)
from wbc.cells.segment_plot import segmentation_figure
from wbc.data.store import decode_image

BACKGROUND, RED_CELL, CYTOPLASM, NUCLEUS = (236, 208, 214), (215, 160, 170), (205, 185, 220), (95, 50, 140)


def cell(size: int = 200, r: int = 40, shape: str = "disc", seed: int = 0, centre: tuple[int, int] | None = None,
         ) -> tuple[np.ndarray, np.ndarray]:
    """A stained-smear-like image: pink background, red cells, lilac cytoplasm and a dark purple
    nucleus of the given shape (disc, ring, lobes), with noise. Returns (rgb, true nucleus mask)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    img[:] = BACKGROUND
    for fx, fy in ((0.15, 0.15), (0.85, 0.2), (0.2, 0.85), (0.82, 0.82)):
        cv2.circle(img, (int(fx * size), int(fy * size)), int(0.11 * size), RED_CELL, -1)
    cx, cy = centre or (size // 2, size // 2)
    cv2.circle(img, (cx, cy), int(r * 1.5), CYTOPLASM, -1)
    truth = np.zeros((size, size), np.uint8)
    if shape in ("disc", "ring"):
        cv2.circle(truth, (cx, cy), r, 1, -1)
    if shape == "ring":
        cv2.circle(truth, (cx, cy), r // 2, 0, -1)
    if shape == "lobes":
        for dx, dy in ((-r // 2, -r // 3), (r // 2, -r // 3), (0, r // 2)):
            cv2.circle(truth, (cx + dx, cy + dy), r // 2, 1, -1)
    img[truth.astype(bool)] = NUCLEUS
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth.astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(int(a.sum() + b.sum()), 1)


# ----------------------------------------------------------------------------- synthetic cells


@pytest.mark.parametrize("size,r", [(200, 40), (64, 14), (600, 130)])
def test_disc_found_with_dice_and_round_shape(size, r):
    rgb, truth = cell(size, r)
    seg = segment(rgb)
    assert seg.status == "ok" and seg.source == "nucleus_image"
    assert dice(seg.nucleus, truth) > 0.95
    circularity, convexity, solidity = shape_features(seg.nucleus)
    assert circularity == pytest.approx(1.0, abs=0.06)
    assert convexity == pytest.approx(1.0, abs=0.02) and solidity == pytest.approx(1.0, abs=0.02)
    assert (seg.hull >= seg.nucleus).all() and not (seg.roc & seg.nucleus).any()
    assert np.array_equal(seg.roc, seg.hull & ~seg.nucleus)


@pytest.mark.parametrize("shape", ["ring", "lobes"])
def test_ring_and_lobes_are_not_solid(shape):
    rgb, truth = cell(shape=shape)
    seg = segment(rgb)
    assert dice(seg.nucleus, truth) > 0.95
    assert shape_features(seg.nucleus)[2] < 0.92
    assert seg.roc.sum() > 0.05 * seg.hull.sum()


def test_m_channel_fallback_for_a_nucleus_the_formula_removes():
    """A very dark purple nucleus has K - M > min(M, S): the nucleus image is 0 there and Otsu on it
    fails, so the paper's fallback (Otsu on M) segments it."""
    rgb, truth = cell()
    rgb[truth] = (60, 40, 70)
    seg = segment(rgb)
    assert seg.status == "m_fallback" and seg.source == "m_channel"
    assert dice(seg.nucleus, truth) > 0.95


def test_ring_hole_kept_small_holes_filled():
    ring = np.zeros((100, 100), bool)
    cv2.circle(ring.view(np.uint8), (50, 50), 30, 1, -1)
    cv2.circle(ring.view(np.uint8), (50, 50), 15, 0, -1)  # a large hole (a third of the area): kept
    speckled = ring.copy()
    speckled[30, 50] = speckled[70, 52] = False           # chromatin-sized holes: filled
    out = fill_small_holes(speckled)
    assert np.array_equal(out, ring)


def test_border_and_neighbour_cells():
    rgb, _ = cell(200, 40, centre=(175, 100))             # the nucleus runs off the right edge
    assert "touches_border" in segment(rgb).flags
    rgb, truth = cell(200, 30)                            # central cell + a neighbour's nucleus cut by the corner
    cv2.circle(rgb, (0, 0), 35, NUCLEUS, -1)
    seg = segment(rgb)
    assert seg.status == "ok" and not seg.nucleus[:20, :20].any()
    assert dice(seg.nucleus, truth) > 0.95


def test_platelet_beside_the_cell_is_dropped_lobes_kept():
    rgb, truth = cell(240, 30)                            # a round nucleus at the centre
    cv2.circle(rgb, (120 + 30 + 40, 120), 11, NUCLEUS, -1)  # a platelet (> 1/10 of its area) 40 px away
    seg = segment(rgb)
    assert not seg.nucleus[:, 185:].any() and dice(seg.nucleus, truth) > 0.95
    rgb, truth = cell(240, 40, shape="lobes")             # separate lobes of one nucleus stay together
    seg = segment(rgb)
    assert dice(seg.nucleus, truth) > 0.9


def test_hull_of_a_rectangle_is_the_rectangle():
    mask = np.zeros((50, 60), bool)
    mask[10:30, 5:40] = True
    assert np.array_equal(convex_hull_mask(mask), mask)


def test_colour_balance_equalises_channel_means():
    rgb = np.random.default_rng(1).integers(60, 200, (40, 50, 3)).astype(np.uint8)
    rgb[:, :, 2] //= 2
    bal = colour_balance(rgb).reshape(-1, 3).astype(float).mean(axis=0)
    grey = rgb.reshape(-1, 3).astype(float).mean(axis=0) @ [0.299, 0.587, 0.114]
    assert bal == pytest.approx([grey] * 3, abs=0.6)


def test_status_convention():
    assert join_flags(set()) == "ok"
    assert join_flags({"empty_roc", "touches_border"}) == "touches_border+empty_roc"
    assert FLAGS == ("m_fallback", "touches_border", "empty_roc")
    with pytest.raises(ValueError):
        join_flags({"nonsense"})


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("image,status", [
    (np.full((120, 100, 3), 255, np.uint8), NO_NUCLEUS),          # blank (white)
    (np.zeros((120, 100, 3), np.uint8), NO_NUCLEUS),              # black
    (np.full((120, 100, 3), BACKGROUND, np.uint8), NO_NUCLEUS),   # uniform colour
    (np.full((120, 100, 3), NUCLEUS, np.uint8), NO_NUCLEUS),      # uniform "nucleus" colour: no contrast
    (np.repeat(np.random.default_rng(0).integers(0, 256, (120, 100, 1)), 3, 2).astype(np.uint8), NO_NUCLEUS),  # grey RGB
    (np.full((120, 100), 128, np.uint8), BAD_INPUT),              # greyscale 2-D
    (np.full((120, 100, 1), 128, np.uint8), BAD_INPUT),           # one channel
    (np.zeros((1, 1, 3), np.uint8), BAD_INPUT),                   # 1x1
    (np.zeros((0, 0, 3), np.uint8), BAD_INPUT),                   # empty
    (np.zeros((50, 50, 3), np.float64), BAD_INPUT),               # not uint8
])
def test_bad_inputs_have_a_defined_outcome(image, status):
    seg = segment(image)
    assert seg.status == status and not seg.found
    assert seg.nucleus.shape == image.shape[:2] and not seg.nucleus.any() and not seg.hull.any() and not seg.roc.any()


def test_rgba_is_composited_on_white():
    rgb, truth = cell()
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.array_equal(segment(opaque).nucleus, segment(rgb).nucleus)
    transparent = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    assert segment(transparent).status == NO_NUCLEUS


# ----------------------------------------------------------------------------- figure


def test_segmentation_figure(tmp_path):
    rgb, _ = cell()
    images = [rgb, (rgb, segment(rgb)), np.full((30, 30), 9, np.uint8)]
    out = segmentation_figure(images, ["test: lymphocyte", "test: lymphocyte", "bad"], tmp_path / "f" / "seg.png", "t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200
    with pytest.raises(ValueError):
        segmentation_figure(images, ["one"], tmp_path / "x.png")


# ----------------------------------------------------------------------------- wbc segment


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _run_segment(paths: list[Path], out: Path) -> int:
    return segment_cmd.run(argparse.Namespace(paths=[str(p) for p in paths], out=str(out)))


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "features.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "mask", "status", "error", *FEATURE_NAMES]
        return {Path(r["path"]).name if ":" not in r["path"] else r["path"].split(":", 1)[1]: r for r in reader}


def test_cli_segment_folder_with_a_broken_file(tmp_path):
    rgb, truth = cell()
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.png").write_bytes(_png(rgb))
    (src / "b.png").write_bytes(_png(np.full((50, 60, 3), 255, np.uint8)))
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with zipfile.ZipFile(src / "more.zip", "w") as z:
        z.writestr("cells/c.png", _png(rgb))
    out = tmp_path / "out"
    assert _run_segment([src], out) == 0
    mask = np.asarray(Image.open(out / "sub" / "a.png"))
    assert mask.shape == rgb.shape[:2] and set(np.unique(mask)) == {0, 255}
    assert dice(mask == 255, truth) > 0.95
    assert not np.asarray(Image.open(out / "b.png")).any()
    assert (out / "more" / "cells" / "c.png").is_file()
    rows = _rows(out)
    assert set(rows) == {"a.png", "b.png", "broken.jpg", "cells/c.png"}
    assert rows["a.png"]["status"] == "ok" and rows["a.png"]["mask"] == "sub/a.png" and rows["a.png"]["error"] == ""
    assert float(rows["a.png"]["solidity"]) > 0.95
    assert rows["b.png"]["status"] == NO_NUCLEUS and rows["b.png"]["circularity"] == "nan"
    assert rows["broken.jpg"]["status"] == "unreadable" and rows["broken.jpg"]["error"] and rows["broken.jpg"]["mask"] == ""


def test_cli_segment_zip_with_a_broken_member(tmp_path):
    rgb, _ = cell(seed=3)
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("lymphocyte/x1.png", _png(rgb))
        z.writestr("lymphocyte/deep/x2.png", _png(rgb))
        z.writestr("neutrophil/broken.jpg", b"garbage")
    out = tmp_path / "out"
    assert _run_segment([archive], out) == 0
    assert (out / "lymphocyte" / "x1.png").is_file() and (out / "lymphocyte" / "deep" / "x2.png").is_file()
    rows = _rows(out)
    assert rows["neutrophil/broken.jpg"]["status"] == "unreadable" and rows["neutrophil/broken.jpg"]["error"]
    assert rows["lymphocyte/x1.png"]["status"] == "ok"


def test_cli_segment_nothing_readable_and_registered(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert _run_segment([bad, tmp_path / "missing.png"], tmp_path / "out") == 1
    from wbc.apps.cli import COMMANDS

    assert COMMANDS.get("segment") == "segment"


# ----------------------------------------------------------------------------- real PBC cells


def pbc_cells(zip_path: Path, per_class: int = 40) -> dict[str, list[np.ndarray]]:
    """`per_class` images of each class, spread evenly over the class folder (by name)."""
    out = {}
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        for label in LABELS:
            members = sorted(n for n in names if n.startswith(f"PBC_dataset_normal_DIB/{label}/")
                             and n.lower().endswith(".jpg") and not n.rsplit("/", 1)[1].startswith("."))
            step = max(1, len(members) // per_class)
            out[label] = [np.asarray(decode_image(z.read(n))) for n in members[::step][:per_class]]
    return out


@pytest.mark.realdata
def test_real_pbc_nuclei_are_plausible(pbc_zip):
    """PBC images are 360 x 363 px; red cells (7-8 um) span ~70-75 px, so 1 px ~ 0.1 um and the
    field is ~36 x 36 um (~1,300 um^2). Every white-cell nucleus (all lobes together) lies between
    ~15 um^2 (a 4.4 um disc, smaller than any of them) and ~330 um^2 (a 20 um disc, the size of the
    largest whole white cell): 1 %..25 % of the image. Monocytes have the largest nuclei of the five
    classes (nucleus 10-12 um) and lymphocytes small ones (7-9 um in a 7-10 um cell): class means of
    about 2-8 % (lymphocyte) and a monocyte mean above the lymphocyte mean."""
    cells = pbc_cells(pbc_zip)
    mean_fraction = {}
    for label, images in cells.items():
        fractions = []
        for rgb in images:
            seg = segment(rgb)
            assert seg.found and seg.nucleus.shape == rgb.shape[:2], label
            fractions.append(seg.nucleus.mean())
        assert 0.01 < min(fractions) and max(fractions) < 0.25, (label, min(fractions), max(fractions))
        mean_fraction[label] = float(np.mean(fractions))
    assert 0.02 < mean_fraction["lymphocyte"] < 0.08
    assert mean_fraction["monocyte"] > mean_fraction["lymphocyte"]
