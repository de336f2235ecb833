"""wbc.apps.predict, wbc.results.predictors, wbc.results.evaluate: `wbc predict` on folders and zip archives, the differential
count, evaluating one model file on the packed sets (the evaluate stage), `wbc evaluate` and `wbc report`."""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wbc import LABELS
from wbc.apps.cli import main
from wbc.core.errors import ConfigError
from wbc.learn.models import build_model, load_checkpoint, save_checkpoint
from wbc.results.evaluate import evaluate_predictor
from wbc.apps.predict import differential_count, predict_files, wilson_interval
from wbc.results.predictors import load_predictor, predict_array
from wbc.dataset.pack import IMAGENET_MEAN, IMAGENET_STD, square_resize
from wbc.data.store import decode_image

SIZE = 32
ARCH = "shufflenet_v2_x1_0"  # small torchvision model (~1.3 M parameters)
COLUMNS = ["path", "label", "confidence", *[f"p_{c}" for c in LABELS], "crop", "error"]


def _save(path: Path, model: torch.nn.Module) -> Path:
    return save_checkpoint(path, model, model_name=ARCH, classes=list(LABELS), image_size=SIZE,
                           mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), params={}, best_epoch=0,
                           val_macro_f1=0.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny checkpoint in the docs/design.md format."""
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_model(ARCH, len(LABELS), image_size=SIZE))


@pytest.fixture(scope="module")
def constant_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that always predicts lymphocyte (head weights 0, bias favouring class 2)."""
    torch.manual_seed(1)
    model = build_model(ARCH, len(LABELS), image_size=SIZE)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 8.0, 0.0, 0.0]))
    return _save(tmp_path_factory.mktemp("ckpt") / "constant.pt", model)


def _image_bytes(seed: int, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "cells"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(_image_bytes(1, (40, 30)))
    (root / "sub" / "b.jpg").write_bytes(_image_bytes(2, (50, 64), "JPEG"))
    (root / "sub" / "c.png").write_bytes(_image_bytes(3, (32, 32)))
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "notes.txt").write_text("not an image: skipped inside folders")
    return root


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "batch.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("slide/z.png", _image_bytes(4, (33, 45)))
        zf.writestr("slide/y.jpg", _image_bytes(5, (60, 40), "JPEG"))
        zf.writestr("slide/trunc.png", _image_bytes(6, (40, 40))[:60])
        zf.writestr("__MACOSX/slide/._z.png", b"\x00\x05\x16\x07")
        zf.writestr("slide/readme.txt", "skipped")
    return path


def _reference_probs(model: torch.nn.Module, data: bytes) -> np.ndarray:
    """Probabilities computed independently: packing path, then (x/255 - mean)/std by hand."""
    x = square_resize(decode_image(data), SIZE).astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[:, None, None]
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x[None])), dim=1)[0].numpy()


def test_predict_files_folder_with_broken_file(folder: Path, checkpoint: Path) -> None:
    model, meta = load_checkpoint(checkpoint)
    frame = predict_files(load_predictor(checkpoint), [folder], batch_size=2)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 4
    broken = frame[frame["path"].str.endswith("broken.jpg")].iloc[0]
    assert broken["error"].startswith("bad image") and broken["label"] == ""
    assert np.isnan(broken[[f"p_{c}" for c in LABELS]].astype(float)).all()
    good = frame[frame["error"] == ""]
    probs = good[[f"p_{c}" for c in LABELS]].to_numpy(float)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert good["label"].tolist() == [LABELS[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(good["confidence"], probs.max(axis=1))
    for row in good.itertuples(index=False):
        ref = _reference_probs(model, Path(row.path).read_bytes())
        np.testing.assert_allclose(probs[good["path"].tolist().index(row.path)], ref, atol=1e-5)


def test_cli_predict_zip_and_folder(folder: Path, archive: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "pred.csv"
    code = main(["predict", str(archive), str(folder), "--model", str(checkpoint), "--out", str(out),
                 "--batch-size", "3", "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 7  # 3 zip image members (1 truncated) + 4 folder images (1 broken)
    errors = frame[frame["error"] != ""]["path"].tolist()
    assert errors == [f"{archive}:slide/trunc.png", str(folder / "broken.jpg")]
    for path in errors:
        assert path in captured.err
    good = frame[frame["error"] == ""]
    assert len(good) == 5
    probs = good[[f"p_{c}" for c in LABELS]].to_numpy(float)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model, _ = load_checkpoint(checkpoint)
    with zipfile.ZipFile(archive) as zf:
        ref = _reference_probs(model, zf.read("slide/y.jpg"))
    np.testing.assert_allclose(good[good["path"] == f"{archive}:slide/y.jpg"].iloc[0][
        [f"p_{c}" for c in LABELS]].to_numpy(float), ref, atol=1e-5)
    assert "Wilson score interval" in captured.out
    for cls in LABELS:
        assert cls in captured.out


def test_cli_predict_nothing_readable(tmp_path: Path, checkpoint: Path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    out = tmp_path / "p.csv"
    assert main(["predict", str(bad), "--model", str(checkpoint), "--out", str(out)]) == 1
    assert "no image could be read" in capsys.readouterr().err
    assert pd.read_csv(out, keep_default_na=False)["error"].tolist() != [""]


def _wilson_by_hand(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_differential_count_wilson() -> None:
    z = NormalDist().inv_cdf(0.975)
    labels = ["neutrophil"] * 12 + ["lymphocyte"] * 5 + ["basophil"] * 3 + [""]  # "" = unreadable, ignored
    table = differential_count(labels, LABELS).set_index("class")
    assert table["count"].tolist() == [3, 0, 5, 0, 12]
    assert table.loc["basophil", "percent"] == pytest.approx(15.0)
    low, high = _wilson_by_hand(3, 20, z)
    assert table.loc["basophil", "ci_low"] == pytest.approx(100 * low, abs=1e-6)
    assert table.loc["basophil", "ci_high"] == pytest.approx(100 * high, abs=1e-6)
    # 3/20: Wilson 95 % interval is about [5.2 %, 36.0 %] (wider than the Wald 15 +- 15.6 %)
    assert 5.2 < table.loc["basophil", "ci_low"] < 5.3 and 36.0 < table.loc["basophil", "ci_high"] < 36.1
    # zero count: lower bound 0, upper bound z^2 / (n + z^2)
    assert table.loc["eosinophil", "ci_low"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["eosinophil", "ci_high"] == pytest.approx(100 * z * z / (20 + z * z), abs=1e-6)
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)


def _packed(root: Path, sets: dict[str, int], classes: list[str] = list(LABELS)) -> Path:
    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    for name, n in sets.items():
        np.save(root / f"{name}_x.npy", rng.integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8))
        np.save(root / f"{name}_y.npy", np.arange(n, dtype=np.int64) % len(classes))
    meta = {"classes": classes, "image_size": SIZE, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "sets": sets, "external": ["ext"]}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_evaluate_predictor(tmp_path: Path, checkpoint: Path, constant_checkpoint: Path) -> None:
    packed = _packed(tmp_path / "packed", {"train": 4, "val": 3, "test": 13, "ext": 7})
    out = tmp_path / "reports" / "evaluate"
    (out / "headline-1").mkdir(parents=True)
    (out / "headline-1" / "stale.png").write_bytes(b"old")
    results = {name: evaluate_predictor(load_predictor(ckpt), packed, out / name, batch_size=4)
               for name, ckpt in (("headline-1", constant_checkpoint), ("tiny-1", checkpoint))}
    for name in ("headline-1", "tiny-1"):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "confusion_ext.png", "confusion_test.png", "metrics.json", "predictions_ext.csv", "predictions_test.csv"]
    # the constant model predicts lymphocyte (class 2) for every image
    y = np.load(packed / "test_y.npy")
    head = json.loads((out / "headline-1" / "metrics.json").read_text())
    assert head == results["headline-1"] and head["model"] == ARCH and set(head) == {"model", "setting", "test", "ext"}
    assert head["test"]["accuracy"] == round(float(np.mean(y == 2)), 4)
    assert head["test"]["per_class"]["lymphocyte"]["sensitivity"] == 1.0
    assert head["test"]["per_class"]["basophil"]["sensitivity"] == 0.0
    assert head["test"]["confusion_matrix"][2] == [0, 0, int(np.sum(y == 2)), 0, 0]
    preds = pd.read_csv(out / "headline-1" / "predictions_test.csv")
    assert list(preds.columns) == ["actual", "predicted"]
    assert preds["actual"].tolist() == [LABELS[i] for i in y]
    assert set(preds["predicted"]) == {"lymphocyte"}
    assert len(pd.read_csv(out / "headline-1" / "predictions_ext.csv")) == 7
    # the random model: CSV, metrics and a direct forward pass agree
    tiny = json.loads((out / "tiny-1" / "metrics.json").read_text())
    model, meta = load_checkpoint(checkpoint)
    x = np.load(packed / "ext_x.npy")
    expected = predict_array(model, x, meta["mean"], meta["std"], batch_size=100).argmax(axis=1)
    ext = pd.read_csv(out / "tiny-1" / "predictions_ext.csv")
    assert ext["predicted"].tolist() == [LABELS[i] for i in expected]
    assert tiny["ext"]["accuracy"] == round(float(np.mean(ext["actual"] == ext["predicted"])), 4)


def test_predict_array_normalises_with_checkpoint_stats(checkpoint: Path) -> None:
    model, _ = load_checkpoint(checkpoint)
    x = np.random.default_rng(3).integers(0, 256, (5, 3, SIZE, SIZE), dtype=np.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    got = predict_array(model, x, mean, std, batch_size=2)
    ref = (x / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(ref.astype(np.float32))), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_evaluate_rejects_mismatched_classes(tmp_path: Path, checkpoint: Path) -> None:
    packed = _packed(tmp_path / "packed", {"test": 5, "ext": 0}, classes=["a", "b", "c", "d", "e"])
    with pytest.raises(ConfigError, match="classes"):
        evaluate_predictor(load_predictor(checkpoint), packed, tmp_path / "ev")


@pytest.mark.realdata
def test_predict_real_pbc_images(pbc_zip: Path, checkpoint: Path, tmp_path: Path) -> None:
    """Real PBC members (360x363 JPEGs) and the archive's fake `.jpg` (a macOS .DS_Store file)."""
    fake = "PBC_dataset_normal_DIB/neutrophil/.DS_169665.jpg"
    with zipfile.ZipFile(pbc_zip) as src:
        names = sorted(n for n in src.namelist() if n.startswith("PBC_dataset_normal_DIB/basophil/"))[:6] + [fake]
        subset = tmp_path / "pbc_subset.zip"
        with zipfile.ZipFile(subset, "w") as dst:
            for name in names:
                dst.writestr(name, src.read(name))
    model, meta = load_checkpoint(checkpoint)
    frame = predict_files(load_predictor(checkpoint), [subset], batch_size=4)
    assert len(frame) == 7
    assert frame.loc[frame["error"] != "", "path"].tolist() == [f"{subset}:{fake}"]
    good = frame[frame["error"] == ""]
    probs = good[[f"p_{c}" for c in LABELS]].to_numpy(float)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with zipfile.ZipFile(subset) as zf:
        np.testing.assert_allclose(probs[0], _reference_probs(model, zf.read(names[0])), atol=1e-5)


def test_cli_evaluate_and_report(tmp_path: Path, checkpoint: Path, constant_checkpoint: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`wbc evaluate MODEL_FILE...` then `wbc report`: the evaluate and report stages by hand."""
    monkeypatch.chdir(tmp_path)
    packed = _packed(tmp_path / "packed", {"test": 6, "ext": 4})
    (tmp_path / "models").mkdir()
    for name, ckpt in (("headline-1", constant_checkpoint), ("mobilenet_v2-1", checkpoint)):
        (tmp_path / "models" / f"{name}.ckpt").write_bytes(ckpt.read_bytes())
    assert main(["evaluate", "models/headline-1.ckpt", "models/mobilenet_v2-1.ckpt", "--packed", str(packed),
                 "--out", "ev", "--device", "cpu"]) == 0
    assert "headline-1 (shufflenet_v2_x1_0) test: n 6" in capsys.readouterr().out
    (tmp_path / "params.yaml").write_text("model: shufflenet_v2_x1_0\ncompare: [mobilenet_v2]\nseeds: [1]\n")
    assert main(["report", "--evaluate", "ev", "--out", "rep", "--metrics", "rep/metrics.json"]) == 0
    table = pd.read_csv(tmp_path / "rep" / "results.csv")
    assert list(zip(table["set"], table["model"], table["headline"])) == [
        ("test", "shufflenet_v2_x1_0", True), ("test", "mobilenet_v2", False),
        ("ext", "shufflenet_v2_x1_0", True), ("ext", "mobilenet_v2", False)]
    flat = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert table.loc[0, "accuracy"] == flat["test"]["accuracy"]
    assert "### ext (n = 4)" in (tmp_path / "rep" / "results.md").read_text()
    # the headline listed in compare too would be trained twice: refused with the fix
    (tmp_path / "params.yaml").write_text("model: mobilenet_v2\ncompare: [mobilenet_v2]\nseeds: [1]\n")
    assert main(["report", "--evaluate", "ev", "--out", "rep", "--metrics", "rep/metrics.json"]) == 2
    assert "also in `compare`" in capsys.readouterr().err
