"""The invariant features (wbc.cells.invariant) and the `invariant_svm` model: invariance to gains,
illumination and resolution, degenerate inputs, batch path and cache files, fitting, safe model
files, the training run, the predictor and the features stage."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wbc import LABELS
from wbc.cells import features as tav
from wbc.cells import invariant as inv
from wbc.cells.featurize import both_kinds, featurize_sets
from wbc.cells.segment import segment
from wbc.core.errors import WbcError
from wbc.data.ingest import MANIFEST_COLUMNS
from wbc.data.store import StoreWriter
from wbc.learn import tavakoli
from wbc.learn.runs import train_run
from wbc.learn.tavakoli import InvariantSVM, ModelFileError, TavakoliSVM
from wbc.learn.zoo import FEATURE_MODELS
from wbc.results.predictors import load_predictor

sys.path.insert(0, str(Path(__file__).parent))
from test_segment import cell  # noqa: E402  (the synthetic stained cell)

COLOUR = np.array([n in inv.COLOUR_NAMES for n in inv.FEATURE_NAMES])
SHAPE = np.array([n in inv.SHAPE_NAMES for n in inv.FEATURE_NAMES])


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def lobed() -> np.ndarray:
    """A synthetic cell with a three-lobed nucleus (a non-empty ROC), 240 px a side."""
    return cell(size=240, r=48, shape="lobes", seed=3)[0]


def test_names():
    assert inv.N_FEATURES == len(inv.FEATURE_NAMES) == 30 == len(set(inv.FEATURE_NAMES))
    assert inv.FEATURE_NAMES[:3] == ("circularity", "convexity", "solidity")
    assert COLOUR.sum() == 18 and SHAPE.sum() == 11
    assert inv.KIND == "invariant" and "invariant_svm" in FEATURE_MODELS and "tavakoli_svm" in FEATURE_MODELS


def test_extract_a_cell(lobed):
    x, status = inv.extract(lobed)
    assert x.shape == (30,) and x.dtype == np.float64 and status == "ok" and np.isfinite(x).all()
    named = dict(zip(inv.FEATURE_NAMES, x))
    assert named["log_lobes"] >= np.log(2)                           # at least one counted component
    assert 0 < named["roc_rel_od_G"] < 1                            # the cytoplasm is paler than the nucleus
    assert named["solidity"] < 0.95


def test_colour_features_ignore_white_balance_and_illumination(lobed):
    """Per-channel gains (another white balance) and a gamma (another exposure/camera curve) leave the
    invariant colour features nearly unchanged, while the Tavakoli colour ratios move under the gamma."""
    x, _ = inv.extract(lobed)
    t, _ = tav.extract(lobed)
    gained = np.clip(lobed * np.array([0.8, 1.0, 0.9]), 0, 255).astype(np.uint8)
    curved = np.clip(255.0 * (lobed / 255.0) ** 1.4, 0, 255).astype(np.uint8)
    for other in (gained, curved):
        y, status = inv.extract(other)
        assert status == "ok"
        np.testing.assert_allclose(y[COLOUR], x[COLOUR], atol=0.04)
        np.testing.assert_allclose(y[SHAPE], x[SHAPE], atol=1e-9)  # same masks: identical shape
    t_curved, _ = tav.extract(curved)
    assert np.nanmax(np.abs(t_curved[3:] - t[3:])) > 0.1             # the Tavakoli colour features change


def test_features_survive_halving_the_resolution(lobed):
    """At half the resolution the scale-free shape and the colour features stay close; the Tavakoli
    std ratios (resolution-dependent texture) move more."""
    x, _ = inv.extract(lobed)
    small = cv2.resize(lobed, (120, 120), interpolation=cv2.INTER_AREA)
    y, status = inv.extract(small)
    assert status == "ok"
    np.testing.assert_allclose(y[COLOUR], x[COLOUR], atol=0.06)
    shape = [inv.FEATURE_NAMES.index(n) for n in ("circularity", "convexity", "solidity", "log_lobes", "thickness")]
    np.testing.assert_allclose(y[shape], x[shape], rtol=0.12)
    t, _ = tav.extract(lobed)
    t_small, _ = tav.extract(small)
    moved_inv = np.median(np.abs(y[COLOUR] - x[COLOUR]))
    moved_tav = np.median(np.abs(t_small[3:] - t[3:]))
    assert moved_inv < moved_tav, (moved_inv, moved_tav)


def test_degenerate_inputs_give_nan_and_a_status(lobed):
    for image, want in ((np.zeros((80, 80), np.uint8), "bad_input"), (np.zeros((4, 4, 3), np.uint8), "bad_input"),
                        (np.full((80, 80, 3), 255, np.uint8), "no_nucleus"),
                        (np.zeros((80, 80, 3), np.float32), "bad_input")):
        x, status = inv.extract(image)
        assert status == want and x.shape == (30,) and np.isnan(x).all()
    x, status = inv.extract_bytes(b"not an image")
    assert status == tav.UNREADABLE and np.isnan(x).all()
    rgba = np.dstack([lobed, np.full(lobed.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(inv.extract(rgba)[0], inv.extract(lobed)[0])
    disc, _ = cell(shape="disc")                                     # convex nucleus: ROC empty
    x, status = inv.extract(disc)
    assert "empty_roc" in status or np.isfinite(x).any()
    roc = np.array([n.startswith("roc_") for n in inv.FEATURE_NAMES])
    if "empty_roc" in status:
        assert np.isnan(x[roc]).all() and np.isfinite(x[SHAPE]).all()
    with pytest.raises(WbcError):
        inv.features_of(segment(lobed), lobed[:100])                 # masks of another image


# ----------------------------------------------------------------------------- batch path, files


@pytest.fixture
def small_store(tmp_path):
    """An image store of 6 cells and a broken image."""
    datas = [_png(cell(seed=i, r=30 + 3 * i, shape="lobes" if i % 2 else "disc")[0]) for i in range(6)]
    datas.insert(2, b"broken")
    rows = []
    with StoreWriter(tmp_path / "store", shard_bytes=80_000) as w:
        for i, d in enumerate(datas):
            shard, offset, length = w.add(d)
            rows.append({"id": f"s/{i}", "shard": shard, "offset": offset, "length": length})
    return pd.DataFrame(rows), tmp_path / "store", datas


def test_batch_extraction_and_both_kinds(small_store):
    rows, root, datas = small_store
    x, status = inv.extract_rows(rows, root, workers=1, progress=False)
    assert x.shape == (7, 30) and x.dtype == np.float32 and status[2] == tav.UNREADABLE and np.isnan(x[2]).all()
    for i in (0, 3):
        np.testing.assert_array_equal(x[i], inv.extract_bytes(datas[i])[0].astype(np.float32))
    both, s2 = tav.extract_rows(rows, root, workers=1, progress=False, extractor=both_kinds,
                                n_features=tav.N_FEATURES + inv.N_FEATURES)
    t, s1 = tav.extract_rows(rows, root, workers=1, progress=False)
    np.testing.assert_array_equal(both[:, :51], t)                     # the Tavakoli features, unchanged
    np.testing.assert_array_equal(both[:, 51:], x)
    assert list(s1) == list(s2) == list(status)


def test_cache_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 30)).astype(np.float32)
    X[1] = np.nan
    path = inv.save_invariant(tav.set_file(tmp_path, "test", inv.KIND), X, ["ok", "no_nucleus", "ok", "ok"],
                              ["a", "b", "c", "d"], [0, 1, 2, 3])
    assert path.name == "test.invariant.npz"
    fs = inv.load_invariant(path)
    np.testing.assert_array_equal(fs.X, X)
    assert fs.feature_names == inv.FEATURE_NAMES and list(fs.labels) == [0, 1, 2, 3]
    with pytest.raises(WbcError, match="feature names"):
        tav.load_features(path)                                      # not the Tavakoli features
    with pytest.raises(ValueError):
        inv.save_invariant(tmp_path / "bad.npz", X[:, :29], ["ok"] * 4, list("abcd"), [0] * 4)


def test_featurize_sets_writes_both_kinds(tmp_path, small_store):
    rows, root, _ = small_store
    rows = rows.drop(index=2).reset_index(drop=True)                   # the broken image is not kept
    kept = pd.DataFrame({c: "" for c in MANIFEST_COLUMNS}, index=rows.index)
    kept[["id", "shard", "offset", "length"]] = rows[["id", "shard", "offset", "length"]]
    kept["label"] = [LABELS[i % 5] for i in range(len(rows))]
    kept[["bytes", "width", "height"]] = 1
    kept.to_csv(tmp_path / "kept.csv", index=False)
    pd.DataFrame({"id": kept["id"], "source": "s", "label": kept["label"], "split": ["train"] * 3 + ["test"] * 3,
                  "index": [0, 1, 2, 0, 1, 2]}).to_csv(tmp_path / "splits.csv", index=False)
    summary = featurize_sets(tmp_path / "splits.csv", tmp_path / "kept.csv", root, tmp_path / "f", tmp_path / "r",
                             workers=1)
    for name in ("train", "test"):
        t = tav.load_features(tmp_path / "f" / f"{name}.npz")
        i = inv.load_invariant(tmp_path / "f" / f"{name}.invariant.npz")
        assert t.X.shape == (3, 51) and i.X.shape == (3, 30) and list(t.ids) == list(i.ids)
        assert summary[name]["invariant"]["features"] == 30
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["test"]["images"] == 3 and "invariant" in saved["test"]


# ----------------------------------------------------------------------------- model


def blobs(n_per_class: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), n_per_class)
    X = rng.normal(size=(len(y), 30))
    X[:, :8] += 2.0 * y[:, None]
    return X, y


@pytest.fixture(scope="module")
def model() -> InvariantSVM:
    X, y = blobs()
    X[2, 5] = np.nan
    return InvariantSVM.fit(X, y, seed=1)


def test_fit_classifies_and_settings(model):
    X, y = blobs(seed=5)
    p = model.predict_proba(X)
    assert p.shape == (150, 5) and np.allclose(p.sum(axis=1), 1) and (p.argmax(axis=1) == y).mean() > 0.9
    assert model.svc.kernel == "rbf" and type(model.scaler).__name__ == "StandardScaler"
    with pytest.raises(WbcError):
        model.predict_proba(np.zeros((2, 51)))                       # the Tavakoli features: refused


def test_model_file_round_trip_and_kind(model, tmp_path):
    path = model.save(tmp_path / "invariant_svm.npz")
    loaded = tavakoli.load_model(path)
    assert type(loaded) is InvariantSVM and loaded.info["seed"] == 1
    X, _ = blobs(seed=7)
    X[0, :3] = np.nan
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["model_name"] == "invariant_svm" and meta["feature_kind"] == "invariant"
    assert meta["feature_names"] == list(inv.FEATURE_NAMES)
    with pytest.raises(ModelFileError):
        TavakoliSVM.load(path)                                       # another model: refused, not misread
    tav_path = TavakoliSVM.fit(*_tav_blobs(), seed=0).save(tmp_path / "tavakoli_svm.npz")
    assert type(tavakoli.load_model(tav_path)) is TavakoliSVM
    with pytest.raises(ModelFileError):
        InvariantSVM.load(tav_path)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta["model_name"] = "nonsense"
    data["meta"] = np.array(json.dumps(meta))
    with open(tmp_path / "bad.npz", "wb") as fh:
        np.savez(fh, **data)
    with pytest.raises(ModelFileError, match="unknown feature model"):
        tavakoli.load_model(tmp_path / "bad.npz")


def _tav_blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(5), 10)
    return rng.normal(size=(50, 51)) + y[:, None], y


def test_train_run_and_predictor(tmp_path, lobed):
    X, y = blobs()
    feats = tmp_path / "features"
    for name in ("train", "val"):
        ids = [f"{name}/{i}" for i in range(len(y))]
        inv.save_invariant(tav.set_file(feats, name, inv.KIND), X, ["ok"] * len(y), ids, y)
    line = train_run("invariant_svm", 2, packed_dir=tmp_path, features_dir=feats, out=tmp_path / "m.npz",
                     log_dir=tmp_path / "log", train_params=None)
    assert "invariant_svm seed 2" in line
    metrics = json.loads((tmp_path / "log" / "metrics.json").read_text())
    assert metrics["model"] == "invariant_svm" and metrics["val_acc"] > 0.9
    with pytest.raises(WbcError):
        train_run("tavakoli_svm", 2, packed_dir=tmp_path, features_dir=feats, out=tmp_path / "t.npz",
                  log_dir=None, train_params=None)                   # no <set>.npz: a clear error
    pred = load_predictor(tmp_path / "m.npz")
    assert pred.model_name == "invariant_svm" and pred.kind == "features"
    vector = pred.prepare(Image.fromarray(lobed))
    np.testing.assert_array_equal(vector, inv.extract(lobed)[0])
    np.save(tmp_path / "val_y.npy", y)
    np.testing.assert_array_equal(pred.set_inputs("val", tmp_path, feats), X.astype(np.float32))
    assert pred.predict(pred.set_inputs("val", tmp_path, feats)).shape == (len(y), 5)
