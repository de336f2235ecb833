"""wbc.results.ensemble: several CNN checkpoints averaged behind one predictor (`wbc predict --model A
--model B`, `wbc evaluate --ensemble`), AdaBN per member, and the refusals (feature models, members
that prepare inputs differently)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wbc import LABELS
from wbc.apps.cli import main
from wbc.apps.predict import predict_files
from wbc.core.errors import ConfigError
from wbc.dataset.pack import IMAGENET_MEAN, IMAGENET_STD
from wbc.learn.models import build_model, save_checkpoint
from wbc.learn.tavakoli import TavakoliSVM
from wbc.results.ensemble import EnsemblePredictor, load_ensemble
from wbc.results.generalization import setting_label
from wbc.results.predictors import CnnPredictor, load_predictor

SIZE = 32
ARCH = "shufflenet_v2_x1_0"
PROBS = [f"p_{c}" for c in LABELS]


def _save(path: Path, seed: int, size: int = SIZE, arch: str = ARCH) -> Path:
    torch.manual_seed(seed)
    model = build_model(arch, len(LABELS), image_size=size)
    return save_checkpoint(path, model, model_name=arch, classes=list(LABELS), image_size=size,
                           mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), params={}, best_epoch=0,
                           val_macro_f1=0.0)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [_save(root / f"m{seed}.ckpt", seed) for seed in (1, 2, 3)]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "cells"
    root.mkdir()
    rng = np.random.default_rng(7)
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (30 + 4 * i, 36, 3), dtype=np.uint8)).save(buf, format="PNG")
        (root / f"c{i}.png").write_bytes(buf.getvalue())
    (root / "broken.png").write_bytes(b"not a png")
    return root


def test_one_file_is_the_plain_predictor(members: list[Path]) -> None:
    assert isinstance(load_ensemble(members[:1]), CnnPredictor)
    with pytest.raises(ConfigError, match="no model file"):
        load_ensemble([])


def test_ensemble_is_the_mean_of_its_members(members: list[Path], folder: Path) -> None:
    ensemble = load_ensemble(members)
    assert isinstance(ensemble, EnsemblePredictor)
    assert ensemble.model_name == f"{ARCH} ensemble of 3" and ensemble.setting()["ensemble"] == 3
    assert setting_label(ensemble.setting()) == "ensemble=3"  # the generalization report's label
    assert setting_label(load_predictor(members[0]).setting()) == "baseline"
    frame = predict_files(ensemble, [folder], batch_size=4)
    singles = [predict_files(load_predictor(p), [folder], batch_size=4) for p in members]
    good = frame["error"] == ""
    assert good.sum() == 6 and frame.loc[~good, "path"].str.endswith("broken.png").all()
    mean = np.mean([s.loc[good, PROBS].to_numpy(float) for s in singles], axis=0)
    np.testing.assert_allclose(frame.loc[good, PROBS].to_numpy(float), mean, atol=1e-6)
    # the members disagree somewhere, or the test says nothing about averaging
    assert not np.allclose(singles[0].loc[good, PROBS].to_numpy(float), singles[1].loc[good, PROBS].to_numpy(float))
    assert frame.loc[good, "label"].tolist() == [LABELS[i] for i in mean.argmax(axis=1)]


def test_adapted_ensemble_adapts_every_member(members: list[Path]) -> None:
    x = np.random.default_rng(3).integers(0, 256, (12, 3, SIZE, SIZE), dtype=np.uint8)
    ensemble = load_ensemble(members, adapt="adabn")
    adapted = ensemble.adapted(x, batch_size=4)
    expected = np.mean([load_predictor(p, adapt="adabn").adapted(x, batch_size=4).predict(x) for p in members], axis=0)
    np.testing.assert_allclose(adapted.predict(x), expected, atol=1e-6)
    assert not np.allclose(adapted.predict(x), ensemble.predict(x), atol=1e-4)  # AdaBN changed something
    plain = load_ensemble(members)
    assert plain.adapted(x) is plain  # adapt none: nothing to re-estimate


def test_refuses_feature_models_and_mismatched_members(members: list[Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    svm = TavakoliSVM.fit(rng.normal(size=(40, 51)), np.repeat(np.arange(5), 8), seed=0)
    svm_path = svm.save(tmp_path / "svm.npz")
    with pytest.raises(ConfigError, match="svm.npz.*averages CNN checkpoints"):
        load_ensemble([members[0], svm_path])
    other = _save(tmp_path / "big.ckpt", 4, size=48)
    with pytest.raises(ConfigError, match="big.ckpt: image_size 48 differs"):
        load_ensemble([members[0], other])


def test_cli_predict_with_several_models(members: list[Path], folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ens.csv"
    args = ["predict", str(folder), "--out", str(out), "--device", "cpu"]
    assert main([*args, *sum((["--model", str(p)] for p in members), [])]) == 0
    assert f"ensemble of {len(members)}" in capsys.readouterr().out
    frame = pd.read_csv(out, keep_default_na=False)
    singles = []
    for i, p in enumerate(members):
        assert main(["predict", str(folder), "--out", str(tmp_path / f"s{i}.csv"), "--device", "cpu",
                     "--model", str(p)]) == 0
        singles.append(pd.read_csv(tmp_path / f"s{i}.csv", keep_default_na=False))
    good = frame["error"] == ""
    mean = np.mean([s.loc[good, PROBS].to_numpy(float) for s in singles], axis=0)
    np.testing.assert_allclose(frame.loc[good, PROBS].to_numpy(float), mean, atol=1e-5)


def test_cli_evaluate_ensemble(members: list[Path], tmp_path: Path) -> None:
    packed = tmp_path / "packed"
    packed.mkdir()
    rng = np.random.default_rng(5)
    np.save(packed / "test_x.npy", rng.integers(0, 256, (10, 3, SIZE, SIZE), dtype=np.uint8))
    np.save(packed / "test_y.npy", np.arange(10, dtype=np.int64) % len(LABELS))
    (packed / "meta.json").write_text(json.dumps({"classes": list(LABELS), "image_size": SIZE,
                                                  "sets": {"test": 10}}))
    out = tmp_path / "evaluate"
    assert main(["evaluate", *map(str, members), "--ensemble", "ens", "--packed", str(packed),
                 "--out", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "ens" / "metrics.json").read_text())
    assert metrics["model"] == f"{ARCH} ensemble of 3" and metrics["setting"]["ensemble"] == 3
    x = np.load(packed / "test_x.npy")
    expected = np.mean([load_predictor(p).predict(x) for p in members], axis=0).argmax(axis=1)
    predicted = pd.read_csv(out / "ens" / "predictions_test.csv")["predicted"].tolist()
    assert predicted == [LABELS[i] for i in expected]
    assert not (out / members[0].stem).exists()  # one ensemble folder, not one per member
