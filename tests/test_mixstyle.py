"""wbc.learn.mixstyle: feature-statistics mixing in training, nothing at evaluation, same weights format."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from wbc.core.errors import ConfigError
from wbc.learn import mixstyle
from wbc.learn.models import build_model, load_checkpoint
from wbc.learn.train import TrainConfig, train_model
from test_train import FAST, make_packed


def styled_batch() -> torch.Tensor:
    """Four feature maps (4, 3, 8, 8) with very different per-channel means and spreads."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, 8, 8, generator=g)
    return base * torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1) + torch.tensor([-3.0, 0.0, 3.0, 6.0]).view(4, 1, 1, 1)


def test_mixes_statistics_keeps_content_in_training_only() -> None:
    layer = nn.Identity()
    hook = mixstyle.MixStyle(p=1.0, seed=3, alpha=1.0)  # alpha 1: lam uniform, every image mixed visibly
    layer.register_forward_hook(hook)
    x = styled_batch()
    layer.train()
    y = layer(x)
    assert hook.mixed == 1 and y.shape == x.shape
    mu_x, mu_y = x.mean((2, 3)), y.mean((2, 3))
    assert not torch.allclose(mu_x, mu_y, atol=1e-3)  # the styles moved
    # each output's statistics lie between its own and another image's (a convex mix of the batch's)
    assert bool(((mu_y >= mu_x.min(0).values - 1e-4) & (mu_y <= mu_x.max(0).values + 1e-4)).all())
    # the content, the normalised map, is the input's
    norm = lambda t: (t - t.mean((2, 3), keepdim=True)) / t.std((2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(norm(x), norm(y), atol=1e-3)
    layer.eval()
    assert torch.equal(layer(x), x) and hook.mixed == 1  # evaluation: untouched


def test_probability_zero_and_seeded_draws() -> None:
    x = styled_batch()
    off = nn.Identity().train()
    hook = mixstyle.MixStyle(p=0.0, seed=1)
    off.register_forward_hook(hook)
    assert torch.equal(off(x), x) and hook.mixed == 0
    outs = []
    for _ in range(2):
        layer = nn.Identity().train()
        layer.register_forward_hook(mixstyle.MixStyle(p=1.0, seed=5))
        outs.append(layer(x))
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ConfigError, match="probability"):
        mixstyle.MixStyle(p=1.5, seed=0)


def test_attach_hooks_resnet_layers_and_refuses_other_families() -> None:
    model = build_model("resnet18", 5, pretrained=False, image_size=32, norm="batch")
    hook = mixstyle.attach(model, "resnet18", 1.0, seed=0)
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert hook.mixed == len(mixstyle.layer_names("resnet18")) == 2
    with pytest.raises(ConfigError, match="mixstyle"):
        mixstyle.attach(build_model("mobilenet_v2", 5, pretrained=False, image_size=32, norm="batch"),
                        "mobilenet_v2", 0.5, seed=0)


def test_training_with_mixstyle_saves_a_plain_checkpoint(tmp_path: Path) -> None:
    packed = make_packed(tmp_path / "packed", {"train": 40, "val": 15})
    cfg = TrainConfig(**{**FAST, "epochs": 1, "max_steps": 3, "mixstyle": 0.5})
    with_mix = train_model("resnet18", packed, cfg, tmp_path / "mix.pt")
    plain = train_model("resnet18", packed, TrainConfig(**{**FAST, "epochs": 1, "max_steps": 3}), tmp_path / "plain.pt")
    model, meta = load_checkpoint(with_mix.checkpoint)  # loads as a plain resnet18
    assert meta["params"]["mixstyle"] == 0.5 and "mixstyle" not in load_checkpoint(plain.checkpoint)[1]["params"]
    a = torch.load(with_mix.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(plain.checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)  # the mixing changed training
    with pytest.raises(ConfigError, match="mixstyle"):
        TrainConfig.from_params({"mixstyle": -0.1})
