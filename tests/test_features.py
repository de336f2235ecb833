"""The 51 Tavakoli features (wbc.cells.features): names, values, degenerate cells, batch path, cache file."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wbc import LABELS
from wbc.core.errors import WbcError
from wbc.cells.features import (COLOUR_NAMES, FEATURE_NAMES, N_FEATURES, UNREADABLE, extract, extract_rows, features_of,
                          load_features, save_features)
from wbc.cells.segment import Segmentation, colour_balance, segment
from wbc.data.store import StoreWriter, decode_image

sys.path.insert(0, str(Path(__file__).parent))
from test_segment import cell, pbc_cells  # noqa: E402  (the synthetic cell and the real-PBC sampler)


def test_names():
    assert len(FEATURE_NAMES) == N_FEATURES == 51 and len(set(FEATURE_NAMES)) == 51
    assert FEATURE_NAMES[:3] == ("circularity", "convexity", "solidity")
    assert len(COLOUR_NAMES) == 48
    assert FEATURE_NAMES[3:7] == ("nucleus_mean_rgb_R", "roc_mean_rgb_R", "nucleus_std_rgb_R", "roc_std_rgb_R")
    assert FEATURE_NAMES[-1] == "roc_std_ycrcb_Cb"


def test_extract_a_cell():
    rgb, _ = cell()
    x, status = extract(rgb)
    assert x.shape == (51,) and x.dtype == np.float64 and status == "ok"
    assert np.isfinite(x).all()
    named = dict(zip(FEATURE_NAMES, x))
    assert named["nucleus_mean_rgb_G"] < 1 < named["roc_mean_rgb_G"]  # a dark nucleus, a light ROC


def test_colour_features_equal_a_direct_computation():
    rgb, _ = cell(seed=5)
    seg = segment(rgb)
    x = features_of(seg)
    bal = colour_balance(rgb)
    chans = np.concatenate([bal, cv2.cvtColor(bal, cv2.COLOR_RGB2HSV), cv2.cvtColor(bal, cv2.COLOR_RGB2LAB),
                            cv2.cvtColor(bal, cv2.COLOR_RGB2YCrCb)], axis=2).astype(np.float64)
    expected = []
    for c in range(12):
        v = chans[:, :, c]
        for stat in (np.mean, np.std):
            for region in (seg.nucleus, seg.roc):
                expected.append(stat(v[region]) / stat(v[seg.hull]))
    np.testing.assert_allclose(x[3:], expected, rtol=1e-9)


def test_degenerate_cells_give_nan_not_numbers():
    x, status = extract(np.full((80, 80, 3), 255, np.uint8))
    assert status == "no_nucleus" and np.isnan(x).all()
    x, status = extract(np.zeros((80, 80), np.uint8))
    assert status == "bad_input" and np.isnan(x).all()
    rgb, _ = cell()
    box = np.zeros(rgb.shape[:2], bool)
    box[60:140, 50:150] = True                     # a convex nucleus: hull == nucleus, the ROC is empty
    seg = Segmentation(box, box.copy(), np.zeros_like(box), "empty_roc", colour_balance(rgb))
    x = features_of(seg)
    roc = np.array([n.startswith("roc_") for n in FEATURE_NAMES])
    assert np.isnan(x[roc]).all() and np.isfinite(x[~roc]).all()
    assert x[FEATURE_NAMES.index("nucleus_mean_rgb_R")] == pytest.approx(1.0)
    assert x[2] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- batch path


def _encode(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def small_store(tmp_path):
    """An image store with 9 cells, a broken image and a row not in the store (shard -1)."""
    datas = [_encode(cell(seed=i, r=30 + 2 * i)[0], "PNG" if i % 2 else "JPEG") for i in range(9)]
    datas.insert(4, b"not an image")
    rows = []
    with StoreWriter(tmp_path / "store", shard_bytes=60_000) as w:   # several shards
        for i, d in enumerate(datas):
            shard, offset, length = w.add(d)
            rows.append({"id": f"s/{i}", "shard": shard, "offset": offset, "length": length})
    rows.append({"id": "s/missing", "shard": -1, "offset": -1, "length": -1})
    return pd.DataFrame(rows), tmp_path / "store", datas


def test_extract_rows_in_order_serial_and_forked(small_store):
    rows, root, datas = small_store
    x1, s1 = extract_rows(rows, root, workers=1, progress=False)
    x2, s2 = extract_rows(rows, root, workers=2, progress=False)
    assert x1.dtype == np.float32 and x1.shape == (11, 51) and s1.dtype.kind == "U"
    np.testing.assert_array_equal(x1, x2)
    assert list(s1) == list(s2)
    assert s1[4] == s1[10] == UNREADABLE and np.isnan(x1[[4, 10]]).all()
    for i in (0, 3, 7):
        want, status = extract(np.asarray(decode_image(datas[i])))
        np.testing.assert_array_equal(x1[i], want.astype(np.float32))
        assert s1[i] == status


def test_extract_rows_errors(tmp_path, small_store):
    rows, root, _ = small_store
    with pytest.raises(WbcError):
        extract_rows(rows.drop(columns="offset"), root)
    with pytest.raises(WbcError):
        extract_rows(rows, tmp_path / "nowhere")
    x, s = extract_rows(rows.iloc[:0], root, progress=False)
    assert x.shape == (0, 51) and s.shape == (0,)


# ----------------------------------------------------------------------------- cache file


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 51)).astype(np.float32)
    X[1] = np.nan
    status = ["ok", "no_nucleus", "ok", "touches_border+empty_roc", "unreadable"]
    ids = [f"pbc/{i}.jpg" for i in range(5)]
    for labels in (np.array([0, 4, 2, 2, 1]), ["basophil", "neutrophil", "lymphocyte", "lymphocyte", "eosinophil"]):
        path = save_features(tmp_path / "sets" / "test.npz", X, status, ids, labels)
        fs = load_features(path)
        np.testing.assert_array_equal(fs.X, X)
        assert list(fs.status) == status and list(fs.ids) == ids and list(fs.labels) == list(labels)
        assert fs.feature_names == FEATURE_NAMES and len(fs) == 5
        assert fs["X"] is fs.X and fs["y"] is fs.labels
    with pytest.raises(ValueError):
        save_features(tmp_path / "bad.npz", X[:, :50], status, ids, labels)


def test_load_refuses_pickles_and_stale_files(tmp_path):
    X = np.zeros((2, 51), np.float32)
    names = np.array(FEATURE_NAMES)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, X=X, status=np.array(["ok", "ok"]), ids=np.array(["a", "b"]), feature_names=names,
             labels=np.array([{"evil": 1}, None], dtype=object))           # an object array: needs pickle
    with pytest.raises(WbcError, match="not a feature file"):
        load_features(pickled)
    stale = tmp_path / "stale.npz"
    np.savez(stale, X=X, status=np.array(["ok", "ok"]), ids=np.array(["a", "b"]), labels=np.array([0, 1]),
             feature_names=names[::-1])
    with pytest.raises(WbcError, match="feature names"):
        load_features(stale)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(WbcError):
        load_features(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------- real PBC cells


@pytest.mark.realdata
def test_real_pbc_shapes_follow_the_biology(pbc_zip):
    """Lymphocyte nuclei are round, single and compact: the highest mean solidity and the lowest mean
    circularity P^2/(4 pi A) of the five classes. Eosinophils (bilobed) and neutrophils (band or 2-5
    lobes) are the two classes with lobed nuclei: both less solid than lymphocytes and monocytes
    (one kidney-shaped nucleus). Measured: eosinophils (two separate lobes) are a little LESS solid
    than neutrophils on PBC, so only the pair is asserted."""
    cells = pbc_cells(pbc_zip)
    means = {}
    for label in LABELS:
        feats = np.array([extract(rgb)[0][:3] for rgb in cells[label]])
        assert np.isfinite(feats).all(), label
        means[label] = feats.mean(axis=0)
    circ = {k: v[0] for k, v in means.items()}
    sol = {k: v[2] for k, v in means.items()}
    assert max(sol, key=sol.get) == "lymphocyte", sol
    assert min(circ, key=circ.get) == "lymphocyte", circ
    assert max(sol["eosinophil"], sol["neutrophil"]) < min(sol["lymphocyte"], sol["monocyte"]), sol
    assert sorted(sol, key=sol.get)[:2] in (["eosinophil", "neutrophil"], ["neutrophil", "eosinophil"]), sol
