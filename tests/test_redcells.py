"""Red cells as a ruler (wbc.cells.redcells) and the red-cell-scaled crop (wbc.cells.cellcrop, crop=rbc)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from wbc.data.synthetic import camera, scene as synth_scene, seeds
from wbc.cells.cellcrop import CropSpec, crop_square
from wbc.core.errors import ConfigError
from wbc.cells.redcells import drop_nested, find_red_cells, median_diameter, red_cell_diameter


def smear(side: int, rbc_radius: float, wbc_radius: float, seed: int = 0, count: int = 14) -> np.ndarray:
    """A drawn smear: pale background, red cells (discs with a paler central pallor) of radius
    `rbc_radius` +- 5 % placed without overlap, and a white cell (lilac cytoplasm, purple nucleus)
    of radius `wbc_radius` at the centre."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side, 3), (240, 222, 205), np.uint8)
    placed: list[tuple[float, float, float]] = [(side / 2, side / 2, wbc_radius)]
    for _ in range(2000):
        if len(placed) > count:
            break
        r = rbc_radius * rng.uniform(0.95, 1.05)
        x, y = rng.uniform(r, side - r, 2)
        if all(np.hypot(x - px, y - py) > r + pr + 2 for px, py, pr in placed):
            placed.append((x, y, r))
            cv2.circle(img, (int(x), int(y)), int(round(r)), (215, 160, 165), -1, cv2.LINE_AA)
            cv2.circle(img, (int(x), int(y)), int(round(r * 0.4)), (228, 190, 188), -1, cv2.LINE_AA)
    c = (side // 2, side // 2)
    cv2.circle(img, c, int(wbc_radius), (200, 175, 220), -1, cv2.LINE_AA)
    cv2.circle(img, c, int(wbc_radius * 0.7), (95, 40, 140), -1, cv2.LINE_AA)
    return img


def test_red_cell_diameter_measures_drawn_red_cells_and_scales_with_the_image() -> None:
    img = smear(360, 30, 45)
    d = red_cell_diameter(img, exclude=(180, 180, 100))
    assert d is not None and abs(d - 60) < 6                          # within 10 % of the drawn 2 x 30
    big = cv2.resize(img, (540, 540), interpolation=cv2.INTER_CUBIC)   # another camera: 1.5x the pixels
    d_big = red_cell_diameter(big, exclude=(270, 270, 150))
    assert d_big is not None and abs(d_big / d - 1.5) < 0.12


def test_red_cells_of_a_low_resolution_photo_measure_like_the_full_resolution_one() -> None:
    """A smear photographed with fewer pixels (shorter side 40-200 px, below the work side) gives the
    same diameter relative to its side as the 360-px image, and is found at all: the red cells of
    another lab's small photos set the crop instead of the `cell` fallback."""
    img = smear(360, 30, 45)
    ref = red_cell_diameter(img, exclude=(180, 180, 100)) / 360
    for side in (200, 120, 80, 56, 40):
        f = side / 360
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        d = red_cell_diameter(small, exclude=(180 * f, 180 * f, 100 * f))
        assert d is not None, side
        assert abs(d / side / ref - 1.0) < 0.08, (side, d / side, ref)
    assert red_cell_diameter(cv2.resize(img, (12, 12), interpolation=cv2.INTER_AREA)) is None  # no room


def test_the_white_cell_and_red_cell_pallor_are_not_counted_as_red_cells() -> None:
    img = smear(360, 30, 45)
    circles = find_red_cells(img, exclude=(180, 180, 100))
    assert len(circles) >= 5
    assert not ((np.abs(circles[:, 0] - 180) < 50) & (np.abs(circles[:, 1] - 180) < 50)).any()
    # concentric circles: the pallor (inner) goes, the cell (outer) stays; a neighbour stays too
    nested = drop_nested(np.array([[50.0, 50.0, 30.0], [51.0, 49.0, 12.0], [120.0, 50.0, 30.0]]))
    assert nested.tolist() == [[50.0, 50.0, 30.0], [120.0, 50.0, 30.0]]


def test_only_circles_of_one_size_measure_the_red_cells() -> None:
    """Red cells of one smear share a size: an outlier circle (two touching cells found as one) is left
    out of the median, and circles of every size (arcs in a crop filled by the white cell) give None."""
    cells = np.array([[10.0, 10.0, 20.0], [60.0, 10.0, 21.0], [10.0, 60.0, 19.0], [60.0, 60.0, 20.5]])
    assert median_diameter(cells) == pytest.approx(40.5)
    assert median_diameter(np.vstack([cells, [[100.0, 100.0, 45.0]]])) == pytest.approx(40.5)
    arcs = np.array([[5.0, 5.0, 34.0], [90.0, 5.0, 17.0], [5.0, 90.0, 8.0]])
    assert median_diameter(arcs) is None
    assert median_diameter(cells[:2]) is None                           # fewer than 3


def test_no_red_cells_gives_none() -> None:
    img = np.full((200, 200, 3), (240, 222, 205), np.uint8)
    cv2.circle(img, (100, 100), 80, (200, 175, 220), -1)
    cv2.circle(img, (100, 100), 56, (95, 40, 140), -1)
    assert red_cell_diameter(img, exclude=(100, 100, 170)) is None


def test_red_cells_of_synthetic_fields_at_two_magnifications() -> None:
    """The embedded generator draws red cells of 2 x (3.5-3.9) µm at each camera's pixels per µm:
    the measured diameters follow the cameras' magnification (PBC 10 px/µm, Raabin 14.5 at 0.7 of
    native resolution). The circles fit the strongest edge, a little inside the soft outer rim, so
    the absolute value reads low; what the crop uses is the ratio between images."""
    scene = synth_scene.Scene(seeds.DEFAULT_SEED, "synth_pbc", 3, "neutrophil", "", 0)
    ratios = []
    for cam in (camera.PBC_CAMERA, camera.RAABIN_CAMERA):
        field = np.asarray(synth_scene.render_field(scene, cam).convert("RGB"))
        d = red_cell_diameter(field)
        assert d is not None
        ratios.append(d / cam.px_per_um / cam.native)
    assert abs(ratios[0] / ratios[1] - 1.0) < 0.1, ratios
    assert all(5.0 < um < 8.6 for um in ratios), ratios


def test_rbc_crop_keeps_the_white_cell_size_relative_to_the_red_cells() -> None:
    """Two labs: one images the smear at 1.6x the pixels per µm and crops it differently. The `rbc`
    crop gives the same cell fraction for both and a larger fraction for a larger white cell; the
    `cell` crop makes small and large white cells the same size (which the rbc crop avoids)."""
    small_a = smear(360, 28, 32, seed=1)
    small_b = cv2.resize(smear(300, 28, 32, seed=2), (480, 480), interpolation=cv2.INTER_CUBIC)
    large_a = smear(360, 28, 56, seed=3)
    spec = CropSpec("rbc", span=3.0)
    frac = {}
    for name, img in (("small_a", small_a), ("small_b", small_b), ("large_a", large_a)):
        arr, found = crop_square(Image.fromarray(img), 64, spec)
        assert found and arr.shape == (3, 64, 64)
        frac[name] = (arr[0] < 150).any(axis=0).mean()   # the nucleus' width / crop side
    assert abs(frac["small_a"] - frac["small_b"]) < 0.06
    assert frac["large_a"] > 1.4 * frac["small_a"]
    cell = [(crop_square(Image.fromarray(i), 64, CropSpec("cell"))[0][0] < 150).any(axis=0).mean()
            for i in (small_a, large_a)]
    assert abs(cell[0] - cell[1]) < 0.06


def test_rbc_crop_falls_back_to_the_cell_crop_and_says_so() -> None:
    img = np.full((200, 200, 3), (240, 222, 205), np.uint8)   # a white cell, no red cells
    cv2.circle(img, (100, 100), 60, (200, 175, 220), -1)
    cv2.circle(img, (100, 100), 42, (95, 40, 140), -1)
    arr, found = crop_square(Image.fromarray(img), 32, CropSpec("rbc"))
    assert not found and np.array_equal(arr, crop_square(Image.fromarray(img), 32, CropSpec("cell"))[0])


def test_rbc_span_is_validated_and_round_trips() -> None:
    spec = CropSpec("rbc", span=3.0)
    assert CropSpec.from_meta(spec.to_dict()) == spec
    assert "rbc_span" not in CropSpec("cell").to_dict()   # older crops' meta is unchanged
    with pytest.raises(ConfigError):
        CropSpec("rbc", span=0.5)


def test_a_checkpoint_trained_on_rbc_crops_prepares_inputs_the_same_way(tmp_path) -> None:
    """The packed data's crop (mode and span) travels into the checkpoint (`input_params`) and back
    out as the predictor's crop, so `wbc predict` and external sets get the training-time crop."""
    from wbc.learn.models import build_model, save_checkpoint
    from wbc.results.predictors import load_predictor
    from wbc.learn.train import input_params

    meta = {**CropSpec("rbc", span=3.0).to_dict(), "lab_target": None, "sets": {}}
    params = {"norm": "batch", **input_params(meta)}
    assert params["crop"] == "rbc" and params["rbc_span"] == 3.0
    ckpt = save_checkpoint(tmp_path / "m.ckpt", build_model("resnet18", 5, image_size=32), model_name="resnet18",
                           classes=["a", "b", "c", "d", "e"], image_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                           params=params, best_epoch=1, val_macro_f1=0.0)
    predictor = load_predictor(ckpt)
    assert predictor.crop == CropSpec("rbc", span=3.0)
    img = Image.fromarray(smear(360, 28, 40, seed=4))
    assert np.array_equal(predictor.prepare(img), crop_square(img, 32, CropSpec("rbc", span=3.0))[0])
    assert predictor.fallbacks == 0


def test_tiny_flat_and_grey_images_give_no_diameter_not_an_error() -> None:
    for img in (np.zeros((6, 9, 3), np.uint8), np.full((40, 40, 3), 200, np.uint8),
                np.repeat(smear(120, 10, 15)[..., :1], 3, axis=2)):
        d = red_cell_diameter(img)
        assert d is None or d > 0
    arr, found = crop_square(Image.new("L", (12, 12), 128), 8, CropSpec("rbc"))
    assert arr.shape == (3, 8, 8) and not found
