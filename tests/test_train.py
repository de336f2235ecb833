"""wbc.learn.train: packed-tensor loading, tensor augmentation, balancing, training, stages, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wbc import LABELS
from wbc.apps.cli import main as cli_main
from wbc.core.errors import ConfigError
from wbc.learn.models import load_checkpoint
from wbc.learn.augment import augment, mean_colour, scale_levels
from wbc.learn.device import select_device
from wbc.learn.packed import PackedSet, balanced_sampler, loss_weights, make_loader, normalise
from wbc.learn.train import TrainConfig, Trainer, train_model

SIZE = 32
COLOURS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30], [220, 30, 220]], np.uint8)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FAST = dict(epochs=2, batch_size=10, lr=0.01, balance="sampler", workers=0, device="cpu", seed=7, threads=1)


def make_packed(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """Tiny packed sets: a disc of the class's colour on grey noise, at a random place."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for name, n in counts.items():
        y = np.arange(n) % len(LABELS)
        rng.shuffle(y)
        x = rng.integers(100, 156, (n, 3, SIZE, SIZE), dtype=np.uint8)
        for i, c in enumerate(y):
            cy, cx = rng.integers(10, SIZE - 10, 2)
            x[i][:, (yy - cy) ** 2 + (xx - cx) ** 2 < 36] = COLOURS[c][:, None]
        np.save(root / f"{name}_x.npy", x)
        np.save(root / f"{name}_y.npy", y.astype(np.int64))
    meta = {"classes": list(LABELS), "image_size": SIZE, "mean": MEAN, "std": STD, "sets": counts, "external": []}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_packed(tmp_path_factory.mktemp("packed"), {"train": 60, "val": 25, "test": 25})


def test_packed_set_batched_indexing_and_workers(packed: Path) -> None:
    ds = PackedSet(packed, "train")
    x_all = np.load(packed / "train_x.npy")
    x, y = ds[[5, 0, 59]]
    assert x.dtype == torch.uint8 and x.shape == (3, 3, SIZE, SIZE)
    assert np.array_equal(x.numpy(), x_all[[5, 0, 59]])
    assert y.tolist() == np.load(packed / "train_y.npy")[[5, 0, 59]].tolist()
    plain = [b for b in make_loader(ds, 16)]
    forked = [b for b in make_loader(ds, 16, workers=1)]
    assert [len(b[1]) for b in plain] == [16, 16, 16, 12]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, forked))


def test_normalise() -> None:
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalise(x, torch.tensor(MEAN), torch.tensor(STD))
    assert torch.allclose(out[0, :, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))


def test_augment_flips_are_exact_and_drawn_per_image() -> None:
    x = torch.randn(64, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    kinds = []
    for a, b in zip(x, out):
        variants = [a, a.flip(2), a.flip(1), a.flip(1).flip(2)]
        matches = [i for i, v in enumerate(variants) if torch.allclose(b, v, atol=1e-5)]
        assert matches, "output is not a flip of its input"
        kinds.append(matches[0])
    assert set(kinds) == {0, 1, 2, 3}
    again = augment(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    assert torch.equal(out, again)


def test_augment_rescale_pads_or_crops() -> None:
    x = torch.ones(4, 3, 16, 16)
    shrunk = augment(x, torch.Generator().manual_seed(1), scale=(0.8, 0.8))
    assert torch.all(shrunk[:, :, 0, 0] == 0) and torch.allclose(shrunk[:, :, 8, 8], torch.ones(4, 3))
    ramp = torch.arange(16.0).repeat(1, 3, 16, 1)  # value = column index
    zoomed = augment(ramp, torch.Generator().manual_seed(1), scale=(1.25, 1.25))
    row = zoomed[0, 0, 8]
    spread = (row.max() - row.min()).item()
    assert spread == pytest.approx(15 / 1.25, abs=0.6)  # a 1.25x zoom shows 80 % of the columns


def test_augment_uint8_zoom_levels_pad_with_fill_colour() -> None:
    assert scale_levels((0.8, 1.2)) == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.2])
    assert scale_levels((1.1, 1.1)) == [1.1]
    fill = mean_colour(torch.tensor([10 / 255, 20 / 255, 30 / 255]))
    assert fill.tolist() == [10.0, 20.0, 30.0]
    x = torch.full((60, 3, 20, 20), 200, dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(2), scale=(0.8, 1.2), fill=fill)
    assert out.dtype == torch.uint8 and out.shape == x.shape and torch.equal(x, torch.full_like(x, 200))
    padded = (out[:, :, 0, 0] == fill.to(torch.uint8)).all(1)
    assert torch.all(out[~padded] == 200) and torch.all(out[:, :, 10, 10] == 200)
    # zoom 0.8 -> 16 px image (4 px of padding per row), 0.9 -> 18 px (2 px): one width per level
    widths = sorted({int((out[i, 0, 10] == 10).sum()) for i in padded.nonzero().flatten().tolist()})
    assert widths == [2, 4]
    assert 10 < int(padded.sum()) < 40  # about 2/5 of the images zoom out
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(2), scale=(0.8, 1.2), fill=fill))


def test_augment_uint8_matches_float_path() -> None:
    x = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(5), scale=(0.9, 1.1), fill=128.0)
    b = augment(x.float(), torch.Generator().manual_seed(5), scale=(0.9, 1.1), fill=128.0)
    diff = (a.float() - b).abs()
    assert diff.max() < 1.01 and diff.mean() < 0.3  # same draws and geometry; the uint8 kernel rounds


def test_balanced_sampler_equalises_classes() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    draws = list(balanced_sampler(labels, 3, torch.Generator().manual_seed(3)))
    assert len(draws) == 1000
    freq = np.bincount(labels[draws], minlength=3) / 1000
    assert np.all(np.abs(freq - 1 / 3) < 0.06)
    assert draws == list(balanced_sampler(labels, 3, torch.Generator().manual_seed(3)))


def test_loss_weights_inverse_frequency() -> None:
    w = loss_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    assert torch.allclose(w, torch.tensor([6 / 9, 6 / 3, 6 / 6, 0.0]))
    cfg = TrainConfig(balance="loss")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 5))
    meta = {"classes": list(LABELS), "mean": MEAN, "std": STD}
    trainer = Trainer(model, cfg, meta, np.array([0, 0, 1, 2, 3, 4]), torch.device("cpu"))
    assert torch.allclose(trainer.criterion.weight, torch.tensor([0.6, 1.2, 1.2, 1.2, 1.2]))
    plain = Trainer(model, TrainConfig(balance="sampler"), meta, np.array([0, 1]), torch.device("cpu"))
    assert plain.criterion.weight is None


def test_config_validation() -> None:
    assert TrainConfig() == TrainConfig(optimizer="sgd", lr=0.001, momentum=0.9, batch_size=10, epochs=15,
                                        step_size=7, gamma=0.1)  # the paper's values are the defaults
    with pytest.raises(ConfigError, match="unknown train params: colour"):
        TrainConfig.from_params({"colour": 1})
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig.from_params({"optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match="balance"):
        TrainConfig.from_params({"balance": "oversample"})
    assert TrainConfig.from_params({"lr": 0.1}, lr=None, epochs=3) == TrainConfig(lr=0.1, epochs=3)


def test_select_device() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else select_device("auto").type)
    if not torch.cuda.is_available():
        assert select_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="no CUDA"):
            select_device("cuda")


def test_end_to_end_training_checkpoint_and_log(packed: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**FAST)
    res = train_model("resnet18", packed, cfg, tmp_path / "m.pt", log_dir=tmp_path / "live")
    assert len(res.history) == 2 and res.best_epoch in (1, 2)
    assert res.val_macro_f1 == max(h["val_macro_f1"] for h in res.history)
    model, meta = load_checkpoint(res.checkpoint)
    assert meta["model_name"] == "resnet18" and meta["image_size"] == SIZE and meta["classes"] == list(LABELS)
    assert meta["params"]["lr"] == 0.01 and meta["best_epoch"] == res.best_epoch
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/macro_f1"):
        rows = (tmp_path / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().strip().splitlines()
        assert rows[0].split("\t")[0] == "step" and len(rows) == 3
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["step"] == 1


def test_training_learns_the_colours(packed: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**FAST, "epochs": 5, "optimizer": "adam", "lr": 0.001})
    res = train_model("resnet18", packed, cfg, tmp_path / "m.pt")
    assert res.val_macro_f1 >= 0.6  # chance is 0.2 on five balanced classes


def test_same_params_same_weights(packed: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**FAST, "epochs": 1, "max_steps": 2})
    runs = [train_model("shufflenet_v2_x1_0", packed, cfg, tmp_path / f"{i}.pt") for i in range(2)]
    other = train_model("shufflenet_v2_x1_0", packed, TrainConfig(**{**FAST, "epochs": 1, "max_steps": 2, "seed": 8}),
                        tmp_path / "other.pt")
    states = [torch.load(r.checkpoint, weights_only=True)["state_dict"] for r in runs + [other]]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_unknown_model_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lenet"):
        train_model("lenet", tmp_path / "nothing", TrainConfig(), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_cli_train(packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.pt"
    rc = cli_main(["train", str(packed), "--model", "mobilenet_v2", "--out", str(out), "--params",
                   str(tmp_path / "none.yaml"), "--epochs", "1", "--max-steps", "2", "--batch-size", "8",
                   "--device", "cpu"])
    assert rc == 0 and "val macro-F1" in capsys.readouterr().out
    assert load_checkpoint(out)[1]["params"]["batch_size"] == 8
    assert cli_main(["train", str(packed), "--model", "lenet", "--out", str(out)]) == 2
    assert "unknown model 'lenet'" in capsys.readouterr().err
