"""The Tavakoli classifier (wbc.learn.tavakoli): fitting, probabilities, imputation, safe model files."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

from wbc import LABELS
from wbc.learn import tavakoli
from wbc.core.errors import WbcError
from wbc.cells.features import FEATURE_NAMES, extract
from wbc.learn.tavakoli import MODEL_NAME, ModelFileError, TavakoliSVM, impute

sys.path.insert(0, str(Path(__file__).parent))
from test_segment import pbc_cells  # noqa: E402


def blobs(n_per_class: int = 40, seed: int = 0, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Features of `classes` well separated groups (class k shifted by k in the first 10 features)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    X = rng.normal(size=(len(y), 51))
    X[:, :10] += 2.0 * y[:, None]
    return X, y


@pytest.fixture(scope="module")
def model() -> TavakoliSVM:
    X, y = blobs()
    X[3, 7] = np.nan
    return TavakoliSVM.fit(X, y, seed=1, status=["ok"] * 190 + ["empty_roc"] * 10)


def test_fit_predict(model):
    X, y = blobs(seed=9)
    p = model.predict_proba(X)
    assert p.shape == (200, 5) and np.allclose(p.sum(axis=1), 1.0) and (p >= 0).all()
    assert (p.argmax(axis=1) == y).mean() > 0.9
    assert list(model.predict(X[:3])) == [LABELS[0]] * 3
    assert model.predict_proba(X[:0]).shape == (0, 5)
    assert model.classes == LABELS and MODEL_NAME == "tavakoli_svm"


def test_settings_and_probabilities_are_those_of_sklearn_calibration(model):
    """Same probabilities as CalibratedClassifierCV(SVC(poly 3, C 6, balanced), sigmoid, ensemble=False)."""
    svc = model.svc
    assert (svc.kernel, svc.degree, svc.C, svc.class_weight) == ("poly", 3, 6.0, "balanced")
    X, y = blobs()
    X[3, 7] = np.nan
    xs = model.scaler.transform(impute(X, model.medians))
    ref = CalibratedClassifierCV(SVC(kernel="poly", degree=3, C=6.0, class_weight="balanced", random_state=1),
                                 method="sigmoid", ensemble=False,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=1)).fit(xs, y)
    Xt, _ = blobs(seed=4)
    np.testing.assert_allclose(model.predict_proba(Xt), ref.predict_proba(model.scaler.transform(Xt)), rtol=1e-10, atol=1e-12)


def test_same_seed_same_model_string_labels():
    X, y = blobs(20)
    names = np.asarray(LABELS)[y]
    a = TavakoliSVM.fit(X, names, seed=3).predict_proba(X)
    b = TavakoliSVM.fit(X, y, seed=3).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_nan_features_take_the_train_medians(model):
    X, _ = blobs(seed=2)
    holes = X[:5].copy()
    holes[:, [0, 20, 50]] = np.nan
    holes[0, 1] = np.inf
    filled = holes.copy()
    for j in (0, 20, 50):
        filled[:, j] = model.medians[j]
    filled[0, 1] = model.medians[1]
    np.testing.assert_array_equal(model.predict_proba(holes), model.predict_proba(filled))
    p = model.predict_proba(np.full((1, 51), np.nan))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)


def test_absent_class_gets_zero_probability():
    X, y = blobs(20, classes=4)                       # no neutrophil in training
    m = TavakoliSVM.fit(X, y)
    p = m.predict_proba(X)
    assert p.shape == (80, 5) and (p[:, 4] == 0).all() and np.allclose(p.sum(axis=1), 1)


def test_binary_training():
    X, y = blobs(15, classes=2)
    p = TavakoliSVM.fit(X, y * 2).predict_proba(X)     # basophil vs lymphocyte
    assert np.allclose(p.sum(axis=1), 1) and (p[:, [1, 3, 4]] == 0).all()
    assert (p.argmax(axis=1) == y * 2).mean() > 0.9


def test_fit_errors():
    X, y = blobs(3)
    with pytest.raises(WbcError):
        TavakoliSVM.fit(X, np.zeros(len(X), int))                  # one class
    with pytest.raises(WbcError):
        TavakoliSVM.fit(X[:, :50], y)                               # not 51 features
    with pytest.raises(WbcError):
        TavakoliSVM.fit(X, ["platelet"] * len(X))                  # unknown label
    with pytest.raises(WbcError):
        TavakoliSVM().predict_proba(X)                              # not fitted


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip_exact(model, tmp_path):
    path = model.save(tmp_path / "m" / "tavakoli_svm.npz")
    loaded = tavakoli.load(path)
    X, _ = blobs(seed=7)
    X[0, :5] = np.nan
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.classes == LABELS
    info = loaded.info
    assert info["seed"] == 1 and info["n_train"] == 200
    assert info["train_counts"] == dict.fromkeys(LABELS, 40)
    assert info["status_counts"] == {"empty_roc": 10, "ok": 190}
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["model_name"] == MODEL_NAME and meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["classes"] == list(LABELS) and meta["params"]["C"] == 6.0


def _rewrite(src: Path, dst: Path, meta_edit=None, **arrays) -> Path:
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(str(data["meta"]))
    if meta_edit:
        meta_edit(meta)
    data["meta"] = np.array(json.dumps(meta))
    data.update(arrays)
    with open(dst, "wb") as fh:
        np.savez(fh, **data)
    return dst


def test_load_refuses_untrusted_files(model, tmp_path):
    good = model.save(tmp_path / "good.npz")
    bad = []
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    bad.append(tmp_path / "model.pkl")                                                   # a pickle
    bad.append(_rewrite(good, tmp_path / "obj.npz", medians=np.array([print], dtype=object)))  # pickled object array
    bad.append(_rewrite(good, tmp_path / "type.npz",
                        lambda m: m["estimators"].update(svc="sklearn.pipeline.Pipeline")))  # unknown type
    bad.append(_rewrite(good, tmp_path / "extra.npz", lambda m: m["state"].update(evil={})))
    bad.append(_rewrite(good, tmp_path / "dtype.npz",
                        lambda m: m["state"]["svc"].update(_gamma={"dtype": "|O", "value": 1})))  # object dtype
    bad.append(_rewrite(good, tmp_path / "value.npz",
                        lambda m: m["state"]["svc"].update(kernel={"value": {"__class__": "os.system"}})))
    bad.append(_rewrite(good, tmp_path / "shape.npz", **{"svc.support_vectors_": np.zeros((3, 51))}))  # inconsistent
    bad.append(_rewrite(good, tmp_path / "kernel.npz",
                        lambda m: m["state"]["svc"].update(kernel={"value": "precomputed"})))
    bad.append(_rewrite(good, tmp_path / "format.npz", lambda m: m.update(format="something-else")))
    bad.append(_rewrite(good, tmp_path / "names.npz", lambda m: m.update(feature_names=["x"] * 51)))
    bad.append(tmp_path / "missing.npz")
    for path in bad:
        with pytest.raises(ModelFileError):
            tavakoli.load(path)
    assert issubclass(ModelFileError, WbcError)


# ----------------------------------------------------------------------------- real PBC cells


@pytest.mark.realdata
def test_real_pbc_cells_are_classified(pbc_zip):
    """Fitted on 28 real cells per class, the 51 features separate 12 other cells per class well
    above chance (20 %): the segmentation and the features carry the class."""
    cells = pbc_cells(pbc_zip, per_class=40)
    X = np.array([extract(rgb)[0] for label in LABELS for rgb in cells[label]])
    y = np.repeat(np.arange(5), 40)
    train = np.tile(np.arange(40) % 10 < 7, 5)
    m = TavakoliSVM.fit(X[train], y[train], seed=0)
    accuracy = (m.predict_proba(X[~train]).argmax(axis=1) == y[~train]).mean()
    assert accuracy > 0.7, accuracy
