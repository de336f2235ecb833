"""wbc.learn.models: architectures by name, ImageNet weights from the torch cache, checkpoints."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from wbc import LABELS
from wbc.core.errors import ConfigError, WbcError
from wbc.learn.models import (MODEL_NAMES, build_model, load_checkpoint, save_checkpoint, weights_cache_path)

PAPER_NINE = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mnasnet1_0", "mobilenet_v2",
              "densenet121", "shufflenet_v2_x1_0", "vgg16"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch cache; downloads fail at once, as offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, dst: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def test_model_names_cover_the_paper_and_three_newer() -> None:
    assert list(MODEL_NAMES[:9]) == PAPER_NINE
    assert set(MODEL_NAMES[9:]) == {"efficientnet_b0", "convnext_tiny", "vit_b_16"}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_with_five_outputs(name: str) -> None:
    size = 224 if name == "vit_b_16" else 32
    model = build_model(name, len(LABELS), pretrained=False, image_size=size).eval()
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert heads[-1].out_features == 5
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 5)


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        build_model("resnet19", 5)
    assert "resnet19" in str(err.value)
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_vit_at_another_size_and_bad_sizes() -> None:
    model = build_model("vit_b_16", 5, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ConfigError, match="divisible by 16"):
        build_model("vit_b_16", 5, image_size=72)
    with pytest.raises(ConfigError, match="too small"):
        build_model("resnet18", 5, image_size=16)


def test_pretrained_offline_without_cache_names_file_and_fixes(torch_home: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_model("resnet18", 5, pretrained=True, image_size=64)
    msg = str(err.value)
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    assert checkpoints.is_relative_to(torch_home)
    assert "resnet18-f37072fd.pth" in msg
    assert str(checkpoints) in msg
    assert "train.pretrained=false" in msg
    assert not (checkpoints / "resnet18-f37072fd.pth").exists()  # no partial file left


def test_pretrained_weights_come_from_the_cache(torch_home: Path) -> None:
    # A "pretrained" file we made: torchvision checks the hash in the name only when downloading.
    fake = torchvision.models.resnet18(weights=None)
    path = weights_cache_path("resnet18")
    assert path.name == "resnet18-f37072fd.pth" and path.is_relative_to(torch_home)
    path.parent.mkdir(parents=True)
    torch.save(fake.state_dict(), path)
    model = build_model("resnet18", 5, pretrained=True, image_size=64)
    assert torch.equal(model.conv1.weight, fake.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, fake.layer4[1].bn2.running_var)
    assert model.fc.out_features == 5
    scratch = build_model("resnet18", 5, pretrained=False, image_size=64)
    assert not torch.equal(scratch.conv1.weight, fake.conv1.weight)


def test_pretrained_vit_position_embeddings_interpolated(torch_home: Path) -> None:
    fake = torchvision.models.vit_b_16(weights=None)
    path = weights_cache_path("vit_b_16")
    path.parent.mkdir(parents=True)
    torch.save(fake.state_dict(), path)
    model = build_model("vit_b_16", 5, pretrained=True, image_size=64)
    assert model.encoder.pos_embedding.shape == (1, 1 + 4 * 4, 768)
    assert torch.equal(model.encoder.pos_embedding[:, 0], fake.encoder.pos_embedding[:, 0])  # class token
    assert torch.equal(model.conv_proj.weight, fake.conv_proj.weight)


def test_checkpoint_round_trip_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 5, image_size=32)
    model.train()
    with torch.no_grad():  # move the BatchNorm running stats away from their initial values
        model(torch.randn(8, 3, 32, 32) * 3 + 1)
    model.eval()
    params = {"model": "mobilenet_v2", "lr": 0.01, "pretrained": False, "balance": "sampler"}
    path = save_checkpoint(tmp_path / "m.pt", model, model_name="mobilenet_v2", classes=list(LABELS),
                           image_size=32, mean=MEAN, std=STD, params=params, best_epoch=3, val_macro_f1=0.75)
    raw = torch.load(path, weights_only=True)
    assert raw["model_name"] == "mobilenet_v2" and raw["classes"] == list(LABELS)
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert meta == {"model_name": "mobilenet_v2", "classes": list(LABELS), "image_size": 32, "mean": MEAN,
                    "std": STD, "params": params, "best_epoch": 3, "val_macro_f1": 0.75}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(WbcError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"model_name": "resnet18"}, tmp_path / "partial.pt")
    with pytest.raises(WbcError, match="lacks"):
        load_checkpoint(tmp_path / "partial.pt")
