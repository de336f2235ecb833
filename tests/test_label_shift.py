"""Class-balanced AdaBN (`adapt: balanced`, wbc.learn.adapt): a lab's folder whose classes are not
balanced (blood: mostly neutrophils) is adapted with the statistics of a class-balanced resample."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wbc.apps.cli import build_parser
from wbc.dataset.pack import IMAGENET_MEAN, IMAGENET_STD
from wbc.learn.adapt import adabn, class_balanced_rows
from wbc.learn.packed import normalise
from wbc.results.predictors import CnnPredictor, load_predictor


def test_balanced_rows_give_every_predicted_class_the_same_share() -> None:
    labels = np.array([0] * 90 + [3] * 9 + [1])           # one class of a single image
    rows = class_balanced_rows(labels, 30000, seed=5)
    shares = np.bincount(labels[rows], minlength=4)[[0, 1, 3]] / len(rows)
    assert np.allclose(shares, 1 / 3, atol=0.02), shares
    assert np.all(np.diff(rows) >= 0) and rows.min() >= 0 and rows.max() < len(labels)
    assert np.array_equal(rows, class_balanced_rows(labels, 30000, seed=5))       # seeded
    assert not np.array_equal(rows, class_balanced_rows(labels, 30000, seed=6))
    one = class_balanced_rows(np.zeros(50, int), 50000)       # one class: every image alike
    assert np.bincount(one, minlength=50).min() > 800
    with pytest.raises(ValueError, match="non-empty"):
        class_balanced_rows(np.array([], int), 10)


def test_adabn_reads_a_resample_from_the_images_without_copying_it() -> None:
    """`rows` (repeats allowed) gives the statistics of x[rows], read batch by batch from x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = np.random.default_rng(1).integers(0, 256, (30, 3, 10, 10), dtype=np.uint8)
    rows = class_balanced_rows(np.repeat([0, 1, 2], [20, 8, 2]), 60, seed=2)
    copied = adabn(model, x[rows], IMAGENET_MEAN, IMAGENET_STD, batch_size=8)
    read = adabn(model, x, IMAGENET_MEAN, IMAGENET_STD, batch_size=8, rows=rows)
    assert torch.equal(copied[1].running_mean, read[1].running_mean)
    assert torch.equal(copied[1].running_var, read[1].running_var)
    whole = adabn(model, x, IMAGENET_MEAN, IMAGENET_STD, batch_size=8)
    assert not torch.allclose(whole[1].running_mean, read[1].running_mean)


def _toy(dark: int, bright: int) -> tuple[CnnPredictor, np.ndarray]:
    """A model whose first layer is BatchNorm on the input and whose class is 'brighter than the
    statistics say' (class 1) or not (class 0), and a set of `dark` dark and `bright` bright images."""
    model = nn.Sequential(nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
        model[3].bias.zero_()
    meta = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "model_name": "toy", "classes": ["dark", "bright"],
            "image_size": 8}
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(35, 46, (dark, 3, 8, 8)), rng.integers(195, 206, (bright, 3, 8, 8))])
    return CnnPredictor(model, meta, "cpu", adapt="balanced"), x.astype(np.uint8)


def _normalised_mean(x: np.ndarray) -> torch.Tensor:
    return normalise(torch.from_numpy(x), torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)).mean(dim=(0, 2, 3))


def test_balanced_adabn_takes_the_statistics_of_a_class_balanced_resample() -> None:
    balanced, x = _toy(dark=90, bright=10)
    plain = CnnPredictor(balanced.model, balanced.meta, "cpu", adapt="adabn")
    pooled = _normalised_mean(x)                                         # mostly the dark class
    even = (_normalised_mean(x[:90]) + _normalised_mean(x[90:])) / 2     # the two classes alike
    plain_mean = plain.adapted(x, batch_size=16).model[0].running_mean
    bal = balanced.adapted(x, batch_size=16)
    assert torch.allclose(plain_mean, pooled, atol=1e-4)
    gap = (even - pooled).abs().min()
    assert (bal.model[0].running_mean - even).abs().max() < 0.2 * gap, (bal.model[0].running_mean, even, pooled)
    assert (bal.predict(x).argmax(axis=1) == np.repeat([0, 1], [90, 10])).all()
    assert torch.equal(balanced.model[0].running_mean, torch.zeros(3))  # the model given is untouched
    again = balanced.adapted(x, batch_size=16)
    assert torch.equal(again.model[0].running_mean, bal.model[0].running_mean)   # deterministic


def test_balanced_adabn_on_a_balanced_set_is_plain_adabn() -> None:
    balanced, x = _toy(dark=40, bright=40)
    plain = CnnPredictor(balanced.model, balanced.meta, "cpu", adapt="adabn").adapted(x, batch_size=16)
    bal = balanced.adapted(x, batch_size=16)
    scale = (_normalised_mean(x[:40]) - _normalised_mean(x[40:])).abs().min()
    assert (bal.model[0].running_mean - plain.model[0].running_mean).abs().max() < 0.15 * scale


def test_predict_adapt_alone_means_balanced_and_takes_a_mode() -> None:
    parser = build_parser()
    base = ["predict", "lab/", "--model", "m.ckpt"]
    assert parser.parse_args(base + ["--adapt", "--tta"]).adapt == "balanced"
    assert parser.parse_args(base + ["--adapt", "adabn"]).adapt == "adabn"
    assert parser.parse_args(base).adapt == "none"
    assert parser.parse_args(["evaluate", "m.ckpt", "--adapt", "balanced"]).adapt == "balanced"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--adapt", "tent"])


def test_an_unknown_adapt_mode_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"not a model")
    with pytest.raises(Exception, match="adapt must be one of none, adabn, balanced"):
        load_predictor(path, adapt="tent")
