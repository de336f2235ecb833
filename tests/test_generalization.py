"""Issue 15, models that survive another lab: cell-centred crops (wbc.cells.cellcrop), stain augmentation
(wbc.learn.augment), GroupNorm (wbc.learn.models), AdaBN (wbc.learn.adapt), Reinhard (wbc.cells.stainnorm), external folder
sets (wbc.dataset.external, the evaluate stage) and the report (wbc.results.generalization)."""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from wbc import LABELS
from wbc.learn.adapt import adabn, batchnorm_layers
from wbc.learn.augment import concentrations, stain_augment
from wbc.cells.cellcrop import CropSpec, cell_box, crop_square
from wbc.apps.cli import main
from wbc.core.errors import ConfigError
from wbc.results.evaluate import evaluate_predictor
from wbc.dataset.external import class_folder, load_external, parse_specs
from wbc.results.generalization import collect, setting_label, write_report
from wbc.learn.models import build_model, load_checkpoint, save_checkpoint
from wbc.apps.predict import predict_files
from wbc.results.predictors import load_predictor
from wbc.cells.segment import segment
from wbc.dataset.pack import IMAGENET_MEAN, IMAGENET_STD
from wbc.learn.train import TrainConfig
from wbc.cells.stainnorm import lab_stats, lab_target, reinhard

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def draw_cell(side: int, radius: float, centre: tuple[float, float]) -> np.ndarray:
    """A smear-like RGB image: pale background, a lilac cytoplasm disc, a dark purple nucleus."""
    img = np.full((side, side, 3), (235, 215, 205), np.uint8)
    c = (int(round(centre[0])), int(round(centre[1])))
    cv2.circle(img, c, int(round(radius)), (205, 180, 225), -1)
    cv2.circle(img, c, int(round(radius * 0.7)), (95, 40, 140), -1)
    return img


def nucleus_fraction(chw: np.ndarray) -> float:
    """The nucleus' width (dark pixels' extent) as a fraction of the crop side."""
    dark = chw[0] < 150
    cols = np.flatnonzero(dark.any(axis=0))
    return (cols[-1] - cols[0] + 1) / chw.shape[-1]


# ----------------------------------------------------------------------------- cell crop

def test_cell_crop_gives_the_same_cell_fraction_at_two_scales() -> None:
    small = Image.fromarray(draw_cell(360, 40, (150, 200)))   # PBC-like: cell ~1/4 of the field
    large = Image.fromarray(draw_cell(224, 95, (112, 118)))   # cropped tight: cell fills the frame
    spec = CropSpec("cell", 0.6)
    (a, found_a), (b, found_b) = crop_square(small, 64, spec), crop_square(large, 64, spec)
    assert found_a and found_b and a.shape == b.shape == (3, 64, 64) and a.dtype == np.uint8
    assert abs(nucleus_fraction(a) - nucleus_fraction(b)) < 0.05
    centre_a, _ = crop_square(small, 64)
    assert abs(nucleus_fraction(centre_a) - nucleus_fraction(b)) > 0.15  # the centre crop does not


def test_cell_crop_falls_back_to_the_centre_and_says_so() -> None:
    blank = Image.new("RGB", (50, 40), (230, 230, 230))
    arr, found = crop_square(blank, 16, CropSpec("cell", 0.6))
    assert not found and np.array_equal(arr, crop_square(blank, 16)[0])
    with pytest.raises(Exception):
        CropSpec("corner")


# ----------------------------------------------------------------------------- stain augmentation

def test_stain_augment_keeps_uint8_is_seeded_and_moves_stain_concentrations() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.stack([draw_cell(48, 14, (24, 24)).transpose(2, 0, 1)] * 6))
    x = (x.int() + torch.from_numpy(rng.integers(-5, 6, x.shape))).clamp(0, 255).to(torch.uint8)
    a = stain_augment(x, torch.Generator().manual_seed(7))
    b = stain_augment(x, torch.Generator().manual_seed(7))
    c = stain_augment(x, torch.Generator().manual_seed(8))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    he_in = concentrations(x)[:, :2].mean(dim=(2, 3))
    he_out = concentrations(a)[:, :2].mean(dim=(2, 3))
    assert (he_out - he_in).abs().max() > 0.02   # H and E concentrations changed


def test_stain_strength_widens_the_colour_jitter_and_one_is_the_default() -> None:
    """strength 2 spreads the per-image colour further than 1; strength 1 is the default stream."""
    from wbc.learn.augment import colour_jitter

    x = torch.from_numpy(np.stack([draw_cell(32, 10, (16, 16)).transpose(2, 0, 1)] * 64))
    default = colour_jitter(x, torch.Generator().manual_seed(3))
    assert torch.equal(default, colour_jitter(x, torch.Generator().manual_seed(3), strength=1.0))
    spread = {}
    for strength in (1.0, 2.0):
        out = colour_jitter(x, torch.Generator().manual_seed(3), strength=strength)
        spread[strength] = out.float().mean(dim=(2, 3)).std(dim=0).mean().item()   # per-image colour spread
    assert spread[2.0] > 1.5 * spread[1.0]
    with pytest.raises(ConfigError):
        TrainConfig(stain_strength=0)


def test_stain_augment_without_jitter_is_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    import wbc.learn.augment as aug

    for name in ("STAIN_SCALE", "STAIN_SHIFT", "BRIGHTNESS", "CONTRAST", "SATURATION", "HUE", "GAMMA"):
        monkeypatch.setattr(aug, name, 0.0)
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8))
    out = aug.colour_jitter(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and torch.equal(out, x)


def test_white_balance_multiplies_each_channel_by_its_own_gain(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.white_balance w: with every other colour range at 0, each image's channels are scaled by
    gains in [exp(-2w), 1] (the largest lowered to at most 1), different per channel and per image; at
    w = 0 the stream of draws is the one without it, and out-of-range values are refused."""
    import wbc.learn.augment as aug

    x = torch.from_numpy(np.random.default_rng(5).integers(40, 200, (16, 3, 24, 24), dtype=np.uint8))
    assert torch.equal(aug.colour_jitter(x, torch.Generator().manual_seed(9)),
                       aug.colour_jitter(x, torch.Generator().manual_seed(9), white_balance=0.0))
    for name in ("STAIN_SCALE", "STAIN_SHIFT", "BRIGHTNESS", "CONTRAST", "SATURATION", "HUE", "GAMMA"):
        monkeypatch.setattr(aug, name, 0.0)
    w = 0.3
    out = aug.colour_jitter(x, torch.Generator().manual_seed(9), white_balance=w).double()
    gains = (out + 1).mean(dim=(2, 3)) / (x.double() + 1).mean(dim=(2, 3))          # (16, 3)
    ratio = (out + 1) / (x.double() + 1)
    assert ((ratio - gains[:, :, None, None]).abs() < 0.03).all()                   # one gain per channel
    assert gains.max() < 1.01 and gains.min() > np.exp(-2 * w) - 0.02
    assert gains.std(dim=1).min() > 0.005 and gains[:, 0].std() > 0.02             # per channel, per image
    with pytest.raises(ConfigError):
        TrainConfig(white_balance=-0.1)


def test_fused_colour_jitter_equals_the_step_by_step_transform() -> None:
    """The fused uint8 path (log table, one exp, gamma table after quantisation) against the textbook
    steps in float64: OD, stain map, back to RGB, colour matrix, contrast about the mean, gamma."""
    import wbc.learn.augment as aug

    x = torch.from_numpy(np.random.default_rng(4).integers(30, 256, (6, 3, 20, 20), dtype=np.uint8))
    got = aug.colour_jitter(x, torch.Generator().manual_seed(11)).double()
    gen = torch.Generator().manual_seed(11)
    a, c = aug._stain_maps(6, gen)
    mats, contrast, gamma = aug._colour_maps(6, gen)
    od = -torch.log((x.double().reshape(6, 3, -1) + 1) / 256)                     # (b, 3, p)
    od2 = torch.einsum("bkp,bkj->bjp", od, a.double()) + c.double().unsqueeze(2)
    rgb = (256 * torch.exp(-od2) - 1) / 255
    rgb = mats.double() @ rgb
    grey = rgb.mean(dim=(1, 2), keepdim=True)
    rgb = contrast.double().view(6, 1, 1) * rgb + (1 - contrast.double().view(6, 1, 1)) * grey
    want = (rgb.clamp(0, 1) ** gamma.double().view(6, 1, 1) * 255).round().reshape(x.shape)
    diff = (got - want).abs()
    assert diff.max() <= 2 and diff.mean() < 0.5, (diff.max(), diff.mean())
    assert (want - x.double()).abs().mean() > 3  # the draws did change the colours


def test_stain_augmented_training_is_the_same_with_loader_workers(tmp_path: Path) -> None:
    """Stain augmentation runs in the DataLoader workers, seeded per batch in batch order: two
    workers train exactly the model the main process alone trains."""
    from wbc.learn.packed import PackedSet, make_loader
    from wbc.learn.train import TrainConfig, train_model

    packed = _packed(tmp_path / "packed", {"train": 12, "val": 4, "test": 4})
    cv2.GaussianBlur(np.zeros((512, 512, 3), np.uint8), (0, 0), 3)  # OpenCV's threads started before the fork
    states = []
    for workers in (0, 2):
        cfg = TrainConfig(seed=3, epochs=1, batch_size=4, stain_augment=True, threads=1, device="cpu", workers=workers)
        res = train_model("resnet18", packed, cfg, tmp_path / f"w{workers}.ckpt")
        states.append(torch.load(res.checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    ds = PackedSet(packed, "train")
    plain = next(iter(make_loader(ds, 4)))[0]
    jittered = next(iter(make_loader(ds, 4, transform=stain_augment, transform_seed=5)))[0]
    again = next(iter(make_loader(ds, 4, transform=stain_augment, transform_seed=5, workers=1)))[0]
    assert not torch.equal(plain, jittered) and torch.equal(jittered, again)


def test_training_with_stain_augment_and_group_norm_round_trips(tmp_path: Path) -> None:
    from wbc.learn.train import TrainConfig, train_model

    packed = _packed(tmp_path / "packed", {"train": 10, "val": 5, "test": 5})
    cfg = TrainConfig(seed=1, epochs=1, batch_size=5, stain_augment=True, norm="group", threads=1, device="cpu")
    res = train_model("resnet18", packed, cfg, tmp_path / "m.ckpt")
    model, meta = load_checkpoint(res.checkpoint)
    assert meta["params"]["norm"] == "group" and meta["params"]["stain_augment"] is True
    assert meta["params"]["crop"] == "cell" and "lab_target" in meta["params"]
    assert not batchnorm_layers(model) and any(isinstance(m, nn.GroupNorm) for m in model.modules())


# ----------------------------------------------------------------------------- GroupNorm

def test_group_norm_model_trains_a_step_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 5, image_size=SIZE, norm="group")
    assert not batchnorm_layers(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    before = model.fc.weight.detach().clone()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(before, model.fc.weight)
    path = save_checkpoint(tmp_path / "g.ckpt", model, model_name="resnet18", classes=list(LABELS), image_size=SIZE,
                           mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), params={"norm": "group"},
                           best_epoch=1, val_macro_f1=0.0)
    loaded, _ = load_checkpoint(path)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)


# ----------------------------------------------------------------------------- AdaBN

def test_adabn_sets_the_target_statistics_and_keeps_the_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5)).eval()
    old_stats = model[1].running_mean.clone()
    x = np.random.default_rng(0).integers(100, 256, (40, 3, 16, 16), dtype=np.uint8)  # a brighter "lab"
    adapted = adabn(model, x, IMAGENET_MEAN, IMAGENET_STD, batch_size=8)
    from wbc.learn.packed import normalise
    with torch.no_grad():
        feats = model[0](normalise(torch.from_numpy(x), torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)))
    assert torch.allclose(adapted[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(adapted[1].running_var, feats.var(dim=(0, 2, 3)), rtol=0.05)
    assert torch.equal(model[1].running_mean, old_stats)  # the original is untouched
    for (name, p), q in zip(model.named_parameters(), adapted.parameters()):
        assert torch.equal(p, q), name
    assert not adapted.training


def test_adabn_pools_statistics_over_class_sorted_images() -> None:
    """Images sorted by class (as test sets and class folders come): the adapted statistics are the
    whole set's, not the last batches' class."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    rng = np.random.default_rng(3)
    dark = rng.integers(0, 80, (48, 3, 12, 12), dtype=np.uint8)
    bright = rng.integers(170, 256, (48, 3, 12, 12), dtype=np.uint8)
    x = np.concatenate([dark, bright])  # sorted: one "class", then the other
    from wbc.learn.packed import normalise
    with torch.no_grad():
        feats = model[0](normalise(torch.from_numpy(x), torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)))
    adapted = adabn(model, x, IMAGENET_MEAN, IMAGENET_STD, batch_size=16)
    assert torch.allclose(adapted[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4)
    # the between-class variance is included (a per-batch average over sorted batches would miss most of it)
    assert torch.allclose(adapted[1].running_var, feats.var(dim=(0, 2, 3)), rtol=1e-3)
    again = adabn(model, x, IMAGENET_MEAN, IMAGENET_STD, batch_size=16)
    assert torch.equal(again[1].running_var, adapted[1].running_var)  # seeded order: deterministic


# ----------------------------------------------------------------------------- Reinhard

def test_reinhard_maps_lab_means_and_stds_to_the_target() -> None:
    rng = np.random.default_rng(1)
    source = np.clip(rng.normal((150, 110, 170), 25, (2, 32, 32, 3)), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    ref = np.clip(rng.normal((200, 160, 150), 18, (3, 32, 32, 3)), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    target = lab_target(ref)
    out = reinhard(source, target)
    assert out.dtype == np.uint8 and out.shape == source.shape
    for img in out:
        mean, std = lab_stats(img)
        np.testing.assert_allclose(mean, target["mean"], atol=1.0)
        np.testing.assert_allclose(std, target["std"], rtol=0.08, atol=0.5)


# ----------------------------------------------------------------------------- external sets, evaluate, predict

def _packed(root: Path, sets: dict[str, int]) -> Path:
    """A packed folder of cell images (labels cycle through the classes), cell crop recorded."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in sets.items():
        x = np.stack([crop_square(Image.fromarray(draw_cell(64, 12 + i % 5, (32, 30))), SIZE, CropSpec("cell"))[0]
                      for i in range(n)])
        x = np.clip(x.astype(int) + rng.integers(-8, 9, x.shape), 0, 255).astype(np.uint8)
        np.save(root / f"{name}_x.npy", x)
        np.save(root / f"{name}_y.npy", np.arange(n, dtype=np.int64) % len(LABELS))
    meta = {"classes": list(LABELS), "image_size": SIZE, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "sets": sets, "external": [], "crop": "cell", "cell_fraction": 0.6,
            "lab_target": lab_target(np.load(root / "train_x.npy"))}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def _checkpoint(path: Path, packed: Path) -> Path:
    torch.manual_seed(0)
    meta = json.loads((packed / "meta.json").read_text())
    params = {"norm": "batch", "crop": "cell", "cell_fraction": 0.6, "lab_target": meta["lab_target"]}
    return save_checkpoint(path, build_model("resnet18", 5, image_size=SIZE), model_name="resnet18",
                           classes=list(LABELS), image_size=SIZE, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                           params=params, best_epoch=1, val_macro_f1=0.0)


def _lab_zip(path: Path) -> Path:
    """Another lab's zip: folders named by the lab (mapped in the params), one blank image."""
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(10):
            buf = io.BytesIO()
            Image.fromarray(draw_cell(100, 30 + i, (50, 48))).save(buf, format="PNG")
            zf.writestr(f"cells/{['baso', 'lym'][i % 2]}/c{i}.png", buf.getvalue())
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (200, 200, 200)).save(buf, format="PNG")
        zf.writestr("cells/lym/blank.png", buf.getvalue())
        zf.writestr("cells/other/x.png", buf.getvalue())
    return path


def test_external_folder_set_declared_in_params_is_packed_and_evaluated(tmp_path: Path) -> None:
    packed = _packed(tmp_path / "data" / "packed", {"train": 10, "val": 5, "test": 5})
    ckpt = _checkpoint(tmp_path / "models" / "m.ckpt", packed)
    (tmp_path / "data" / "external").mkdir(parents=True)
    _lab_zip(tmp_path / "data" / "external" / "lab.zip")
    params = {"evaluate": {"batch_size": 8, "adapt": "adabn", "stain_norm": "reinhard",
                           "external": {"mylab": {"path": "lab.zip", "classes": {"baso": "basophil", "lym": "lymphocyte"}}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py"), "--model-file", str(ckpt), "--packed",
                    str(packed), "--features", str(tmp_path / "none"), "--out", str(tmp_path / "ev"),
                    "--external-root", "data/external"], cwd=tmp_path, check=True, env=env, capture_output=True)
    res = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert res["mylab"]["n"] == 11 and res["test"]["n"] == 5
    assert res["mylab"]["external_folder"]["skipped"] == {"other folder": 1}
    assert res["mylab"]["external_folder"]["cell_crop_fallback"] == 1   # the blank image
    assert res["setting"] == {"crop": "cell", "cell_fraction": 0.6, "norm": "batch", "stain_augment": False,
                              "stain_norm": "reinhard", "adapt": "adabn", "tta": False}
    assert (tmp_path / "ev" / "predictions_mylab.csv").is_file()
    assert class_folder("a.zip:cells/lym/x.png") == "lym" and class_folder("/d/eos/y.png") == "eos"
    frame = write_report({"adapted": tmp_path / "ev"}, tmp_path / "gen.md", tmp_path / "gen.png")
    assert set(frame["set"]) == {"test", "mylab"} and (tmp_path / "gen.png").is_file()
    assert "| resnet18 | adapted |" in (tmp_path / "gen.md").read_text()


def test_external_paths_outside_the_tracked_folder_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data" / "external"
    assert parse_specs({"a": {"path": "x/lab.zip"}}, root=root)["a"]["path"] == root / "x" / "lab.zip"
    for outside in (str(tmp_path / "lab.zip"), "../lab.zip", "x/../../lab.zip"):
        with pytest.raises(ConfigError, match="outside"):
            parse_specs({"a": {"path": outside}}, root=root)
    assert parse_specs({"a": {"path": "/abs/lab.zip"}})["a"]["path"] == Path("/abs/lab.zip")  # wbc evaluate: any path


def test_evaluate_refuses_a_checkpoint_of_another_crop(tmp_path: Path) -> None:
    packed = _packed(tmp_path / "packed", {"train": 5, "val": 5, "test": 5})
    meta = json.loads((packed / "meta.json").read_text())
    (packed / "meta.json").write_text(json.dumps({**meta, "crop": "centre"}))
    with pytest.raises(Exception, match="crop"):
        evaluate_predictor(load_predictor(_checkpoint(tmp_path / "m.ckpt", packed)), packed, tmp_path / "ev")


def test_predict_uses_the_checkpoint_crop_adapts_and_counts_fallbacks(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    packed = _packed(tmp_path / "packed", {"train": 5, "val": 5, "test": 5})
    ckpt = _checkpoint(tmp_path / "m.ckpt", packed)
    lab = _lab_zip(tmp_path / "lab.zip")
    frame = predict_files(load_predictor(ckpt, adapt="adabn", stain_norm="reinhard"), [lab], adapt=True)
    assert len(frame) == 12 and (frame["error"] == "").all() and frame.attrs["cell_crop_fallback"] == 2
    plain = predict_files(load_predictor(ckpt), [lab])
    assert not np.allclose(frame["p_basophil"], plain["p_basophil"])   # adaptation + Reinhard changed the inputs
    assert main(["predict", str(lab), "--model", str(ckpt), "--adapt", "--out", str(tmp_path / "p.csv")]) == 0
    assert "adapted to these 12 image(s): class-balanced AdaBN" in capsys.readouterr().out
    assert main(["predict", str(lab), "--model", str(ckpt), "--tta", "--out", str(tmp_path / "t.csv")]) == 0
    tta = pd.read_csv(tmp_path / "t.csv")
    assert len(tta) == 12 and not np.allclose(tta["p_basophil"], plain["p_basophil"])   # 8 views averaged


def test_setting_labels() -> None:
    assert setting_label({"crop": "centre", "norm": "batch", "stain_augment": False}) == "baseline"
    label = setting_label({"crop": "cell", "cell_fraction": 0.6, "norm": "group", "adapt": "adabn"})
    assert label == "crop=cell 0.6 + norm=group + adapt=adabn"
    assert setting_label({"crop": "original image", "norm": "n/a"}) == "baseline"
    assert setting_label({"crop": "rbc", "rbc_span": 2.5, "stain_augment": True}) == "crop=rbc 2.5 + stain_augment"
    assert collect([]).empty


# ----------------------------------------------------------------------------- real images

def _sample(zip_path: Path, folder_of, per_class: int) -> list[tuple[str, Image.Image]]:
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".png")) and "/." not in n)
        picks = []
        for label in LABELS:
            members = [n for n in names if folder_of(n) == label]
            picks += random.Random(0).sample(members, per_class)
        return [(n, Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in picks]


@pytest.mark.realdata
@pytest.mark.parametrize("which", ["pbc", "lisc"])
def test_cell_crop_finds_the_cell_in_real_images(which: str, pbc_zip: Path, shared_dir: Path) -> None:
    if which == "pbc":
        images = _sample(pbc_zip, lambda n: n.split("/")[-2], 8)
    else:
        lisc = shared_dir / "data" / "external" / "lisc" / "LISC_crops.zip"
        if not lisc.is_file():
            pytest.skip(f"{lisc} missing")
        images = _sample(lisc, lambda n: n.split("/")[0], 8)
    spec, found, fractions = CropSpec("cell", 0.6), 0, []
    for name, img in images:
        arr, ok = crop_square(img, 128, spec)
        found += ok
        if not ok:
            continue
        crop = np.ascontiguousarray(arr.transpose(1, 2, 0))
        seg = segment(crop)
        assert seg.found, name
        ys, xs = np.nonzero(seg.nucleus)
        # the nucleus is inside the crop, around its centre
        assert abs(xs.mean() - 64) < 32 and abs(ys.mean() - 64) < 32, name
        box = cell_box(crop)
        if box is not None:
            fractions.append(box[2] / 128)
    assert found >= 0.9 * len(images)
    assert abs(float(np.median(fractions)) - 0.6) < 0.1, fractions


def test_adabn_adapts_other_labs_sets_and_keeps_the_in_domain_test_split(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """AdaBN is a step for a new lab: the packed external set (another camera) and a declared lab get
    their own statistics; the in-domain test split is predicted as trained (same as adapt none)."""
    packed = _packed(tmp_path / "packed", {"train": 10, "val": 5, "test": 7, "camb": 6})
    meta = json.loads((packed / "meta.json").read_text())
    (packed / "meta.json").write_text(json.dumps({**meta, "external": ["camb"]}))
    ckpt = _checkpoint(tmp_path / "m.ckpt", packed)
    lab = {"mylab": {"path": _lab_zip(tmp_path / "lab.zip"), "classes": {"baso": "basophil", "lym": "lymphocyte"}}}
    seen = []
    original = type(load_predictor(ckpt)).adapted

    def spy(self, x, batch_size=64):
        seen.append(len(x))
        return original(self, x, batch_size=batch_size)

    monkeypatch.setattr(type(load_predictor(ckpt)), "adapted", spy)
    adapted = evaluate_predictor(load_predictor(ckpt, adapt="adabn"), packed, tmp_path / "a", external=lab)
    assert seen == [6, 11]                       # camb, then mylab; never the 7 test images
    plain = evaluate_predictor(load_predictor(ckpt), packed, tmp_path / "p", external=lab)
    assert adapted["test"]["confusion_matrix"] == plain["test"]["confusion_matrix"]
    assert adapted["setting"]["adapt"] == "adabn"


def test_balanced_adabn_evaluates_other_labs_sets_like_the_recipe(tmp_path: Path) -> None:
    """The recipe's `evaluate.adapt: balanced` runs end to end: the declared lab is adapted (its
    predictions differ from plain AdaBN's probabilities), the in-domain test split is not."""
    packed = _packed(tmp_path / "packed", {"train": 10, "val": 5, "test": 7})
    ckpt = _checkpoint(tmp_path / "m.ckpt", packed)
    lab = {"mylab": {"path": _lab_zip(tmp_path / "lab.zip"), "classes": {"baso": "basophil", "lym": "lymphocyte"}}}
    bal = evaluate_predictor(load_predictor(ckpt, adapt="balanced"), packed, tmp_path / "b", external=lab)
    plain = evaluate_predictor(load_predictor(ckpt, adapt="adabn"), packed, tmp_path / "a", external=lab)
    assert bal["setting"]["adapt"] == "balanced" and bal["mylab"]["n"] == 11
    assert bal["test"]["confusion_matrix"] == plain["test"]["confusion_matrix"]
    plain_predictor = load_predictor(ckpt)
    x = load_external("mylab", lab["mylab"], plain_predictor, plain_predictor.classes).x
    p_bal = load_predictor(ckpt, adapt="balanced").adapted(x).predict(x)
    p_plain = load_predictor(ckpt, adapt="adabn").adapted(x).predict(x)
    assert p_bal.shape == p_plain.shape and not np.allclose(p_bal, p_plain)


def test_tta_averages_the_eight_rotations_and_reflections(tmp_path: Path) -> None:
    """With tta the probabilities are the mean over the 8 dihedral views: invariant to rotating or
    mirroring the input, and equal to averaging the plain model's predictions of the 8 views."""
    packed = _packed(tmp_path / "packed", {"train": 6, "val": 2, "test": 6})
    ckpt = _checkpoint(tmp_path / "m.ckpt", packed)
    x = np.load(packed / "test_x.npy")
    plain, tta = load_predictor(ckpt), load_predictor(ckpt, tta=True)
    views = [np.ascontiguousarray(np.rot90(x, k, axes=(2, 3))[..., ::-1] if f else np.rot90(x, k, axes=(2, 3)))
             for f in (False, True) for k in range(4)]
    expected = np.mean([plain.predict(v) for v in views], axis=0)
    np.testing.assert_allclose(tta.predict(x), expected, atol=1e-5)
    np.testing.assert_allclose(tta.predict(np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))), expected, atol=1e-5)
    assert not np.allclose(plain.predict(x), expected, atol=1e-4)   # the views do differ for this model
    assert tta.setting()["tta"] is True and setting_label(tta.setting()).endswith("tta")
