"""The classifier of Tavakoli et al. (Sci Rep 11:19428, 2021) on the 51 features of `wbc.cells.features`.

    model = TavakoliSVM.fit(X, y, seed=0, status=status)   # a classmethod: returns a fitted model
    p = model.predict_proba(X_test)          # (n, 5), columns in `model.classes` order
    model.save("models/tavakoli_svm.npz"); load("models/tavakoli_svm.npz")  # = TavakoliSVM.load

Pipeline (the paper's, plus what it leaves open):
1. NaN (and infinite) features are imputed with the TRAIN medians of each feature (a feature with no
   finite training value gets 0). Undefined features come from degenerate cells (`wbc.cells.features`).
2. Min-max scaling fitted on the (imputed) training set (test values may fall outside 0..1).
3. SVC with a polynomial kernel of degree 3, C = 6, balanced class weights (sklearn defaults
   otherwise: gamma "scale", coef0 0, one-vs-one inside, one-vs-rest decision values).
4. Per-class probabilities: Platt sigmoids on the one-vs-rest decision values, fitted on out-of-fold
   decision values (stratified `CALIBRATION_FOLDS`-fold CV shuffled with the seed), the SVC itself
   refitted on all the training data, probabilities normalised to sum 1: what sklearn's
   `CalibratedClassifierCV(SVC(...), method="sigmoid", ensemble=False)` computes. This replaces
   `SVC(probability=True)`, deprecated in scikit-learn 1.9 (to be removed in 1.11). Probabilities
   are computed here from the stored arrays, so a loaded model gives bit-identical results.

A second configuration of the same machinery, `InvariantSVM` (`invariant_svm`), is fitted on the
stain-invariant, scale-free features of `wbc.cells.invariant` (cached as `<set>.invariant.npz`):
standardisation (StandardScaler) instead of min-max scaling, which extrapolates badly on another
lab's cells, and an RBF kernel (`INVARIANT_C`, gamma "scale"); imputation, class weights,
calibration and files as above. Each class names its features (`FEATURE_NAMES`, `FEATURE_KIND`: the
cache file, `extract`: one image's features), so a model file says which features it needs, and
`load_model` reads a file of either class.

Saving (`save` / `load`): ONE .npz file, arrays only (read with allow_pickle=False, so no pickle
can run), plus a JSON text array with the parameters and metadata (classes, feature names, seed,
training counts per class and per degenerate status). The fitted sklearn estimators are rebuilt from
their attribute arrays and JSON scalars; only the types in `TRUSTED` can be named, anything else,
any object array, or inconsistent shapes are refused with `ModelFileError`.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sklearn
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVC

from wbc import LABELS
from wbc.core.errors import WbcError
from wbc.cells import invariant
from wbc.cells import features

MODEL_NAME = "tavakoli_svm"
FORMAT, FORMAT_VERSION = "wbc-tavakoli-svm", 1
#: The paper's classifier settings.
C, DEGREE, KERNEL, CLASS_WEIGHT = 6.0, 3, "poly", "balanced"
CALIBRATION_FOLDS = 5
#: The only estimator types a model file may name (file key -> class).
TRUSTED = {"scaler": MinMaxScaler, "svc": SVC}
#: `invariant_svm`: standardised invariant features, RBF SVC (chosen on PBC validation and degraded copies).
INVARIANT_NAME, INVARIANT_FORMAT = "invariant_svm", "wbc-invariant-svm"
INVARIANT_C, INVARIANT_KERNEL = 3.0, "rbf"
_NUMERIC_KINDS = "biuf"


class ModelFileError(WbcError):
    """A model file that is not a valid, trusted feature-SVM file."""


class TavakoliSVM:
    """Min-max scaling + polynomial SVC (C = 6, degree 3, balanced) with Platt-calibrated probabilities.

    Made by `TavakoliSVM.fit(...)` or `TavakoliSVM.load(path)`; `TavakoliSVM(classes)` is an unfitted shell.
    The class attributes below are its configuration; `InvariantSVM` overrides them.
    """

    MODEL_NAME, FORMAT, FORMAT_VERSION = MODEL_NAME, FORMAT, FORMAT_VERSION
    #: The features: their names and cache-file kind ("" = `<set>.npz`, `wbc.cells.features.set_file`).
    FEATURE_NAMES: tuple[str, ...] = features.FEATURE_NAMES
    FEATURE_KIND = ""
    TRUSTED: dict[str, type] = TRUSTED
    SVC_PARAMS: dict[str, Any] = {"kernel": KERNEL, "degree": DEGREE, "C": C, "class_weight": CLASS_WEIGHT}
    #: Saved as the file's "params" (what the model is, for a reader of the file).
    PARAMS: dict[str, Any] = {"C": C, "degree": DEGREE, "kernel": KERNEL, "class_weight": CLASS_WEIGHT,
                              "calibration": "sigmoid", "calibration_folds": CALIBRATION_FOLDS,
                              "imputation": "train median"}
    #: Extra metadata of the file (none for the Tavakoli SVM, whose files stay as they were).
    EXTRA_META: dict[str, Any] = {}

    @staticmethod
    def extract(rgb: np.ndarray) -> tuple[np.ndarray, str]:
        """(feature vector, status) of one RGB image: the features this model is fitted on."""
        return features.extract(rgb)

    def __init__(self, classes: Sequence[str] = LABELS):
        self.classes = tuple(classes)
        self.medians: np.ndarray | None = None
        self.scaler: MinMaxScaler | None = None
        self.svc: SVC | None = None
        self.calib_a: np.ndarray | None = None
        self.calib_b: np.ndarray | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting

    def _encode(self, y: Sequence) -> np.ndarray:
        """Labels (class names or indices into `classes`) -> int indices."""
        y = np.asarray(y)
        if y.dtype.kind in "iu":
            idx = y.astype(np.int64)
            bad = (idx < 0) | (idx >= len(self.classes))
        else:
            lookup = {c: i for i, c in enumerate(self.classes)}
            idx = np.array([lookup.get(str(v), -1) for v in y], np.int64)
            bad = idx < 0
        if bad.any():
            raise WbcError(f"labels outside the classes {list(self.classes)}: {sorted(set(map(str, y[bad])))[:5]}")
        return idx

    @classmethod
    def fit(cls, X: np.ndarray, y: Sequence, seed: int = 0, status: Sequence[str] | None = None,
            classes: Sequence[str] = LABELS) -> TavakoliSVM:
        """A model fitted on features X (n, 51) and labels y (class names, or indices into `classes`).

        `seed` drives the calibration folds (and the SVC's own seed); `status` (the feature statuses of
        the rows) is only counted and stored. Raises WbcError for fewer than two classes with 2+ rows.
        """
        model = cls(classes)
        X = _features(X, cls.FEATURE_NAMES)
        y_idx = model._encode(y)
        if len(y_idx) != len(X):
            raise WbcError(f"{len(X)} feature rows but {len(y_idx)} labels")
        counts = np.bincount(y_idx, minlength=len(model.classes))
        present = counts[counts > 0]
        if len(present) < 2 or present.min() < 2:
            raise WbcError(f"training needs two or more classes with at least 2 images each; counts {counts.tolist()}")
        model.medians = train_medians(X)
        model.scaler = cls.TRUSTED["scaler"]().fit(impute(X, model.medians))
        xs = model.scaler.transform(impute(X, model.medians))
        folds = StratifiedKFold(min(CALIBRATION_FOLDS, int(present.min())), shuffle=True, random_state=seed)
        svc = SVC(**cls.SVC_PARAMS, random_state=seed)
        calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False).fit(xs, y_idx)
        fitted = calibrated.calibrated_classifiers_[0]
        model.svc = fitted.estimator
        model.calib_a = np.array([c.a_ for c in fitted.calibrators], np.float64)
        model.calib_b = np.array([c.b_ for c in fitted.calibrators], np.float64)
        model.info = {
            "seed": int(seed), "n_train": int(len(X)),
            "train_counts": {c: int(n) for c, n in zip(model.classes, counts)},
            "status_counts": dict(sorted(Counter(map(str, status)).items())) if status is not None else {},
            "sklearn_version": sklearn.__version__,
        }
        return model

    # ------------------------------------------------------------------ prediction

    def _check_fitted(self) -> None:
        if self.svc is None:
            raise WbcError(f"the {self.MODEL_NAME} model is not fitted")

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """One-vs-rest SVC decision values (n, classes present in training), or (n, 1) with two classes."""
        self._check_fitted()
        X = _features(X, self.FEATURE_NAMES)
        if not len(X):
            return np.zeros((0, len(self.calib_a)))
        d = self.svc.decision_function(self.scaler.transform(impute(X, self.medians)))
        return d.reshape(len(d), -1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, len(classes)), rows summing to 1; 0 for classes absent in training."""
        d = self.decision_function(X)
        p = expit(-(d * self.calib_a + self.calib_b))
        trained = self.svc.classes_.astype(np.int64)
        out = np.zeros((len(d), len(self.classes)))
        if len(trained) == 2:
            out[:, trained[1]] = p[:, 0]
            out[:, trained[0]] = 1.0 - p[:, 0]
            return out
        total = p.sum(axis=1, keepdims=True)
        uniform = np.full_like(p, 1.0 / len(trained))
        out[:, trained] = np.divide(p, total, out=uniform, where=total != 0)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable class name of each row."""
        return np.asarray(self.classes)[self.predict_proba(X).argmax(axis=1)]

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write the model to one .npz file (arrays + JSON; no pickle)."""
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {"medians": self.medians, "calib_a": self.calib_a, "calib_b": self.calib_b}
        scalars = {}
        for key, est in (("scaler", self.scaler), ("svc", self.svc)):
            est_arrays, scalars[key] = _split_state(est)
            arrays.update({f"{key}.{name}": a for name, a in est_arrays.items()})
        meta = {"format": self.FORMAT, "version": self.FORMAT_VERSION, "model_name": self.MODEL_NAME,
                "classes": list(self.classes), "feature_names": list(self.FEATURE_NAMES),
                "estimators": {k: _type_name(v) for k, v in self.TRUSTED.items()}, "params": dict(self.PARAMS),
                **self.EXTRA_META, **self.info, "state": scalars}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TavakoliSVM:
        """Read a file written by `save`; raises ModelFileError for anything else (no code is run)."""
        arrays, meta = _read_npz(path, cls)
        model = cls(meta["classes"])
        model.medians, model.calib_a, model.calib_b = arrays["medians"], arrays["calib_a"], arrays["calib_b"]
        for key, est_cls in cls.TRUSTED.items():
            state = {name.split(".", 1)[1]: a for name, a in arrays.items() if name.startswith(key + ".")}
            state.update({k: _decode_scalar(v, path) for k, v in meta["state"].get(key, {}).items()})
            setattr(model, key, _rebuild(est_cls, state, path))
        model.info = {k: meta.get(k) for k in ("seed", "n_train", "train_counts", "status_counts", "sklearn_version")}
        _check_consistent(model, path)
        return model


class InvariantSVM(TavakoliSVM):
    """`invariant_svm`: standardisation + RBF SVC (C = INVARIANT_C, balanced) with Platt-calibrated
    probabilities, on the stain-invariant, scale-free features of `wbc.cells.invariant`."""

    MODEL_NAME, FORMAT, FORMAT_VERSION = INVARIANT_NAME, INVARIANT_FORMAT, 1
    FEATURE_NAMES = invariant.FEATURE_NAMES
    FEATURE_KIND = invariant.KIND
    TRUSTED = {"scaler": StandardScaler, "svc": SVC}
    SVC_PARAMS = {"kernel": INVARIANT_KERNEL, "C": INVARIANT_C, "gamma": "scale", "class_weight": CLASS_WEIGHT}
    PARAMS = {"C": INVARIANT_C, "kernel": INVARIANT_KERNEL, "gamma": "scale", "class_weight": CLASS_WEIGHT,
              "scaling": "standard", "calibration": "sigmoid", "calibration_folds": CALIBRATION_FOLDS,
              "imputation": "train median"}
    EXTRA_META = {"feature_kind": invariant.KIND}

    @staticmethod
    def extract(rgb: np.ndarray) -> tuple[np.ndarray, str]:
        """(invariant feature vector, status) of one RGB image (`wbc.cells.invariant.extract`)."""
        return invariant.extract(rgb)


#: Every feature-SVM class by the model name its files carry.
MODELS: dict[str, type[TavakoliSVM]] = {m.MODEL_NAME: m for m in (TavakoliSVM, InvariantSVM)}


# ---------------------------------------------------------------------- preprocessing


def _features(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise WbcError(f"expected features of shape (n, {len(names)}), got {X.shape}")
    return X


def train_medians(X: np.ndarray) -> np.ndarray:
    """Per-feature median of the finite training values (0 for a feature without any)."""
    finite = np.where(np.isfinite(X), X, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        med = np.nanmedian(finite, axis=0) if len(X) else np.full(X.shape[1], np.nan)
    return np.where(np.isfinite(med), med, 0.0)


def impute(X: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """X with every NaN or infinite value replaced by its feature's training median."""
    return np.where(np.isfinite(X), X, medians[None, :])


# ---------------------------------------------------------------------- safe (de)serialisation


def _type_name(t: type) -> str:
    return f"{t.__module__.split('._')[0]}.{t.__name__}"


def _split_state(est: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An estimator's attributes -> (numeric arrays, JSON-encoded scalars); anything else is an error."""
    arrays, scalars = {}, {}
    for name, value in est.__getstate__().items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _NUMERIC_KINDS:
                raise TypeError(f"{type(est).__name__}.{name}: non-numeric array {value.dtype}")
            arrays[name] = value
        else:
            scalars[name] = _encode_scalar(value, name)
    return arrays, scalars


def _encode_scalar(value: Any, name: str) -> dict[str, Any]:
    if isinstance(value, np.generic) and value.dtype.kind in _NUMERIC_KINDS:
        return {"dtype": value.dtype.str, "value": value.item()}
    if isinstance(value, tuple) and all(_plain(v) for v in value):
        return {"tuple": list(value)}
    if _plain(value):
        return {"value": value}
    raise TypeError(f"attribute {name}: cannot store a {type(value).__name__}")


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _decode_scalar(enc: Any, path: str | Path) -> Any:
    """Inverse of `_encode_scalar`, accepting only plain JSON values and numeric numpy dtypes."""
    if isinstance(enc, dict) and set(enc) == {"tuple"} and isinstance(enc["tuple"], list) \
            and all(_plain(v) for v in enc["tuple"]):
        return tuple(enc["tuple"])
    if isinstance(enc, dict) and set(enc) == {"value"} and _plain(enc["value"]):
        return enc["value"]
    if isinstance(enc, dict) and set(enc) == {"dtype", "value"} and _plain(enc["value"]):
        try:
            dtype = np.dtype(str(enc["dtype"]))
        except TypeError as exc:
            raise ModelFileError(f"{path}: unknown dtype {enc['dtype']!r}") from exc
        if dtype.kind not in _NUMERIC_KINDS:
            raise ModelFileError(f"{path}: refused dtype {dtype}")
        return dtype.type(enc["value"])
    raise ModelFileError(f"{path}: refused attribute value {str(enc)[:80]}")


def _read_raw(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and the JSON metadata (a dict) of a model file, unchecked; ModelFileError when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:  # object arrays need pickle: refused
        raise ModelFileError(f"{path}: refused (contains pickled objects or is malformed: {exc})") from exc
    except (OSError, EOFError) as exc:
        raise ModelFileError(f"{path}: not a model file ({exc})") from exc
    if not isinstance(arrays, dict) or "meta" not in arrays or arrays["meta"].dtype.kind != "U":
        raise ModelFileError(f"{path}: not a {FORMAT} file (no metadata)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: not a feature-SVM file (metadata is not a mapping)")
    return arrays, meta


def _read_npz(path: str | Path, cls: type[TavakoliSVM]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (numeric only) and the JSON metadata of a model file, checked against the class's FORMAT,
    TRUSTED types and features."""
    arrays, meta = _read_raw(path)
    fmt, trusted, names = cls.FORMAT, cls.TRUSTED, cls.FEATURE_NAMES
    if meta.get("format") != fmt or meta.get("model_name") != cls.MODEL_NAME:
        raise ModelFileError(f"{path}: not a {fmt} file")
    if meta.get("version") != cls.FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {meta.get('version')} (this code reads {cls.FORMAT_VERSION})")
    if meta.get("feature_kind", "") != cls.FEATURE_KIND:
        raise ModelFileError(f"{path}: needs the {meta.get('feature_kind')!r} features, not {cls.FEATURE_KIND!r}")
    expected = {k: _type_name(v) for k, v in trusted.items()}
    if meta.get("estimators") != expected:
        raise ModelFileError(f"{path}: refused estimator types {meta.get('estimators')} (trusted: {expected})")
    if not isinstance(meta.get("state"), dict) or set(meta["state"]) - set(trusted):
        raise ModelFileError(f"{path}: refused state for {sorted(set(meta.get('state') or {}) - set(trusted))}")
    if meta.get("feature_names") != list(names):
        raise ModelFileError(f"{path}: trained on other features than this version's {len(names)}")
    bad = [k for k, a in arrays.items() if a.dtype.kind not in _NUMERIC_KINDS]
    if bad:
        raise ModelFileError(f"{path}: refused non-numeric arrays {bad}")
    for key in ("medians", "calib_a", "calib_b"):
        if key not in arrays:
            raise ModelFileError(f"{path}: missing array {key}")
    return arrays, meta


def _rebuild(est_cls: type, state: dict[str, Any], path: str | Path) -> Any:
    """A fitted estimator of a TRUSTED type from its attribute state."""
    if any(not k.isidentifier() or k.startswith("__") for k in state):
        raise ModelFileError(f"{path}: refused attribute names")
    est = est_cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InconsistentVersionWarning: the arrays are checked below instead
        est.__setstate__(state)
    return est


def _check_consistent(model: TavakoliSVM, path: str | Path) -> None:
    """Shapes and dtypes libsvm relies on (a crafted file must not reach it inconsistent)."""
    svc, nf = model.svc, len(model.FEATURE_NAMES)
    try:
        k, sv = len(svc.classes_), svc.support_vectors_
        n_sv = np.asarray(svc._n_support)
        ok = (sv.dtype == np.float64 and sv.ndim == 2 and sv.shape[1] == nf and n_sv.dtype == np.int32
              and n_sv.shape == (k,) and int(n_sv.sum()) == len(sv) and (n_sv >= 0).all()
              and svc._dual_coef_.shape == (k - 1, len(sv)) and svc._dual_coef_.dtype == np.float64
              and svc._intercept_.shape == (k * (k - 1) // 2,) and svc._intercept_.dtype == np.float64
              and svc.n_features_in_ == nf and svc.kernel == model.SVC_PARAMS["kernel"]
              and model.scaler.scale_.shape == (nf,) and model.medians.shape == (nf,)
              and model.calib_a.shape == model.calib_b.shape == ((1,) if k == 2 else (k,))
              and 2 <= k <= len(model.classes) and ((svc.classes_ >= 0) & (svc.classes_ < len(model.classes))).all())
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: incomplete model ({exc})") from exc
    if not ok:
        raise ModelFileError(f"{path}: inconsistent model arrays")


def load(path: str | Path) -> TavakoliSVM:
    """`TavakoliSVM.load`: a model file written by `TavakoliSVM.save` (refuses anything else)."""
    return TavakoliSVM.load(path)


def load_model(path: str | Path) -> TavakoliSVM:
    """A model file of any feature-SVM class (`MODELS`, told apart by the file's model name)."""
    _arrays, meta = _read_raw(path)
    cls = MODELS.get(str(meta.get("model_name")))
    if cls is None:
        raise ModelFileError(f"{path}: unknown feature model {meta.get('model_name')!r}; known: {sorted(MODELS)}")
    return cls.load(path)
