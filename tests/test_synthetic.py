"""Tests of the embedded synthetic dataset (wbc.data.synthetic, `wbc synth`)."""
from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from wbc import LABELS
from wbc.apps import cli
from wbc.data import synthetic
from wbc.core.errors import ConfigError

SCALE = 0.1
PBC_NAME = re.compile(r"^PBC_dataset_normal_DIB/([a-z]+)/(\.DS|BA|EO|LY|MO|SNE|BNE|NEUTROPHIL|ERB|IG|MY|MMY|PMY"
                      r"|PLATELET)_\d+\.(jpg|png)$")
RAABIN_NAME = re.compile(r"^(Train|TestA|TestB)/(Basophil|Eosinophil|Lymphocyte|Monocyte|Neutrophil)/"
                         r"\d{8}_\d{6}\.(jpg|png)$")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """The dataset at scale 0.1 (about 180 images), rendered with 2 processes."""
    out = tmp_path_factory.mktemp("synth")
    synthetic.generate(out, seed=7, scale=SCALE, workers=2)
    return out


@pytest.fixture(scope="module")
def truth(synth) -> list[dict]:
    return synthetic.read_truth(synth / synthetic.TRUTH_FILE)


@pytest.fixture(scope="module")
def blobs(synth, truth) -> dict[tuple[str, str], bytes]:
    """(file, member) -> bytes of every archive member."""
    out = {}
    for name in sorted({r["file"] for r in truth}):
        for member, data in synthetic.iter_members(synth / name):
            out[(name, member)] = data
    return out


def _zip_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _rgb(data: bytes) -> Image.Image:
    img = _decode(data)
    if img.mode == "I;16":
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) // 257).astype(np.uint8))
    return img.convert("RGB")


# -- determinism --------------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_archives_whatever_the_workers(tmp_path):
    a = synthetic.generate(tmp_path / "a", seed=11, scale=0.03, workers=1)
    b = synthetic.generate(tmp_path / "b", seed=11, scale=0.03, workers=2)
    assert [p.name for p in a] == [p.name for p in b]
    assert _zip_bytes(tmp_path / "a") == _zip_bytes(tmp_path / "b")
    c = synthetic.generate(tmp_path / "c", seed=12, scale=0.03, workers=2)
    files_a, files_c = _zip_bytes(tmp_path / "a"), _zip_bytes(tmp_path / "c")
    assert files_a.keys() == files_c.keys()
    assert all(files_a[k] != files_c[k] for k in files_a)


def test_zip_members_are_sorted_stored_with_fixed_dates(synth):
    for path in sorted(synth.glob("*.zip")):
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names) and len(set(names)) == len(names)
        assert {i.date_time for i in infos} == {synthetic.ZIP_DATE}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        assert not any(n.endswith("/") for n in names)


def test_file_names_come_from_the_registry(synth):
    reg = yaml.safe_load((Path(synthetic.__file__).parents[1] / "sources.yaml").read_text(encoding="utf-8"))
    expected = {s["file"] for s in reg["sources"].values() if s.get("generator") == "synthetic"}
    assert {p.name for p in synth.glob("*.zip")} == expected
    assert (synth / synthetic.TRUTH_FILE).is_file()


def test_bad_scale_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="scale must be > 0"):
        synthetic.generate(tmp_path, scale=0)


# -- ground truth ---------------------------------------------------------------------------------

def test_truth_lists_exactly_the_archive_members(truth, blobs):
    assert list(truth[0].keys()) == list(synthetic.TRUTH_COLUMNS)
    assert {(r["file"], r["member"]) for r in truth} == set(blobs)
    assert len(truth) == len(blobs)
    for r in truth:
        data = blobs[(r["file"], r["member"])]
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        parts = r["member"].split("/")
        assert parts[-2] == r["class_folder"]
        assert r["kind"] in synthetic.KINDS
        assert r["label"] == (r["class_folder"].lower() if r["class_folder"].lower() in LABELS else "excluded")


def test_layouts_and_image_sizes_match_the_real_archives(truth, blobs):
    sizes = defaultdict(Counter)
    for r in truth:
        pattern = PBC_NAME if r["source"] == "synth_pbc" else RAABIN_NAME
        assert pattern.match(r["member"]), r["member"]
        if r["kind"] != "broken":
            sizes[r["source"]][_decode(blobs[(r["file"], r["member"])]).size] += 1
    assert set(sizes["synth_pbc"]) == {(360, 363)}
    for source in ("synth_raabin_train", "synth_raabin_testa", "synth_raabin_testb"):
        assert set(sizes[source]) == {(575, 575)}
    pbc_folders = {r["class_folder"] for r in truth if r["source"] == "synth_pbc"}
    assert pbc_folders == set(LABELS) | {"erythroblast", "ig", "platelet"}


def test_exact_copies_and_label_conflicts_are_byte_identical_to_their_original(truth, blobs):
    groups = defaultdict(list)
    for r in truth:
        if r["group"]:
            groups[r["group"]].append(r)
    kinds = Counter()
    for members in groups.values():
        origin = [r for r in members if r["kind"] == "original"]
        assert len(origin) == 1 and len(members) >= 2
        src = blobs[(origin[0]["file"], origin[0]["member"])]
        for r in members:
            if r["kind"] in ("exact_copy", "label_conflict"):
                kinds[r["kind"]] += 1
                assert blobs[(r["file"], r["member"])] == src
                assert r["member"] != origin[0]["member"]
                assert r["true_label"] == origin[0]["true_label"]
                same_folder = r["class_folder"] == origin[0]["class_folder"]
                assert same_folder == (r["kind"] == "exact_copy")
                assert r["label"] in LABELS
    assert kinds["exact_copy"] >= 4 and kinds["label_conflict"] >= 2


def test_broken_files_do_not_decode(truth, blobs):
    broken = [r for r in truth if r["kind"] == "broken"]
    assert {r["detail"] for r in broken} == {"truncated", "zero", "ds_store"}
    for r in broken:
        data = blobs[(r["file"], r["member"])]
        with pytest.raises(Exception):
            _decode(data)
        if r["detail"] == "zero":
            assert data == b""
        if r["detail"] == "ds_store":
            assert Path(r["member"]).name.startswith(".DS_") and r["member"].endswith(".jpg")
            assert len(data) == 6148 and data[4:8] == b"Bud1"
        if r["detail"] == "truncated":
            assert data[:2] == b"\xff\xd8" and not data.endswith(b"\xff\xd9")


def test_odd_modes_are_valid_images_needing_conversion(truth, blobs):
    odd = [r for r in truth if r["kind"] == "odd_mode"]
    modes = Counter(_decode(blobs[(r["file"], r["member"])]).mode for r in odd)
    assert set(modes) == {"L", "CMYK", "P", "RGBA", "I;16"}
    for r in odd:
        img = _rgb(blobs[(r["file"], r["member"])])
        assert img.size in {(360, 363), (575, 575)}
        assert np.asarray(img).std() > 10  # a picture, not a blank


def _thumb(data: bytes) -> np.ndarray:
    return np.asarray(_rgb(data).convert("L").resize((64, 64), Image.Resampling.BOX), dtype=float)


def _aligned_ncc(a: np.ndarray, b: np.ndarray, margin: int = 9) -> float:
    """Best normalised correlation of two thumbnails over shifts up to `margin` px."""
    best = -1.0
    n = a.shape[0]
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            pa = a[max(dy, 0):n + min(dy, 0), max(dx, 0):n + min(dx, 0)]
            pb = b[max(-dy, 0):n + min(-dy, 0), max(-dx, 0):n + min(-dx, 0)]
            pa, pb = pa - pa.mean(), pb - pb.mean()
            best = max(best, float((pa * pb).sum() / np.sqrt((pa * pa).sum() * (pb * pb).sum())))
    return best


def test_near_duplicates_differ_in_bytes_but_show_the_same_cell(truth, blobs):
    groups = defaultdict(list)
    for r in truth:
        if r["group"] and any(m["kind"] == "near_duplicate" for m in truth if m["group"] == r["group"]):
            groups[r["group"]].append(r)
    assert len(groups) >= 5
    assert any(len({r["source"] for r in g}) == 2 for g in groups.values())  # a Train/TestA group
    singles = [r for r in truth if r["kind"] == "original" and not r["group"]]
    for members in groups.values():
        origin = next(r for r in members if r["kind"] == "original")
        base = _thumb(blobs[(origin["file"], origin["member"])])
        others = [r for r in singles if r["true_label"] == origin["true_label"]
                  and r["file"] == origin["file"]][:5]
        unrelated = max(_aligned_ncc(base, _thumb(blobs[(r["file"], r["member"])])) for r in others)
        for r in members:
            if r is origin:
                continue
            data = blobs[(r["file"], r["member"])]
            assert r["kind"] == "near_duplicate" and data != blobs[(origin["file"], origin["member"])]
            assert r["class_folder"] == origin["class_folder"]
            score = _aligned_ncc(base, _thumb(data))
            assert score > 0.6 and score > unrelated + 0.05, (r["member"], score, unrelated)


# -- content ----------------------------------------------------------------------------------------

def test_class_imbalance_like_the_real_data(truth):
    cells = [r for r in truth if r["kind"] == "original" and r["label"] in LABELS]
    counts = Counter(r["label"] for r in cells)
    assert counts.most_common(1)[0][0] == "neutrophil"
    assert 0.35 < counts["neutrophil"] / len(cells) < 0.65
    assert min(counts, key=counts.get) == "basophil" and counts["basophil"] >= 4
    by_source = Counter(r["source"] for r in truth)
    total = sum(by_source.values())
    assert 0.35 < by_source["synth_pbc"] / total < 0.55
    assert 0.25 < by_source["synth_raabin_train"] / total < 0.45


def _features(img: Image.Image) -> np.ndarray:
    """16x16 colour thumbnail of the central half plus a coarse colour histogram."""
    w, h = img.size
    centre = img.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    thumb = np.asarray(centre.resize((16, 16), Image.Resampling.BOX), dtype=float).ravel() / 255
    hist = np.histogramdd(np.asarray(centre).reshape(-1, 3), bins=(4, 4, 4), range=[(0, 256)] * 3)[0].ravel()
    return np.concatenate([thumb, hist / hist.sum()])


def test_a_simple_classifier_separates_the_classes(truth, blobs):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = [r for r in truth if r["kind"] == "original" and r["label"] in LABELS and not r["group"]]
    x = np.stack([_features(_rgb(blobs[(r["file"], r["member"])])) for r in rows])
    y = np.array([LABELS.index(r["label"]) for r in rows])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    pred = cross_val_predict(model, x, y,
                             cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert balanced_accuracy_score(y, pred) > 0.6  # chance: 0.2


def _gradient(img: Image.Image) -> float:
    """Mean absolute horizontal grey-level step (fine detail)."""
    return float(np.abs(np.diff(np.asarray(img.convert("L"), dtype=float), axis=1)).mean())


def test_testb_looks_like_another_camera(truth, blobs):
    def stats(source: str) -> tuple[np.ndarray, float]:
        imgs = [_rgb(blobs[(r["file"], r["member"])]) for r in truth
                if r["source"] == source and r["kind"] == "original"][:12]
        bg = np.median([np.percentile(np.asarray(i).reshape(-1, 3), 90, axis=0) for i in imgs], axis=0)
        sharp = float(np.mean([_gradient(i) / _gradient(i.reduce(4)) for i in imgs]))
        return bg, sharp

    bg_a, sharp_a = stats("synth_raabin_testa")
    bg_b, sharp_b = stats("synth_raabin_testb")
    assert np.abs(bg_a - bg_b).max() > 15     # other colour balance
    assert sharp_b < 0.85 * sharp_a           # less fine detail (lower native resolution, blur)


def test_pbc_style_resembles_the_real_pbc_images(synth, truth, blobs, pbc_zip):
    """Same crop size and similar background / darkest (nucleus) colours as real PBC crops."""
    def colours(imgs):
        px = [np.asarray(i.convert("RGB")).reshape(-1, 3) for i in imgs]
        return (np.median([np.percentile(p, 90, axis=0) for p in px], axis=0),
                np.median([np.percentile(p, 1, axis=0) for p in px], axis=0))

    with zipfile.ZipFile(pbc_zip) as zf:
        names = [n for n in zf.namelist() if re.search(r"/(neutrophil|lymphocyte|eosinophil)/[A-Z]+_\d+\.jpg$", n)]
        real = [_decode(zf.read(n)) for n in names[::400]]
    fake = [_rgb(blobs[(r["file"], r["member"])]) for r in truth
            if r["source"] == "synth_pbc" and r["kind"] == "original"
            and r["label"] in ("neutrophil", "lymphocyte", "eosinophil")][:len(real)]
    assert Counter(i.size for i in real).most_common(1)[0][0] == fake[0].size
    (bg_r, dark_r), (bg_f, dark_f) = colours(real), colours(fake)
    assert np.abs(bg_r - bg_f).max() < 15, (bg_r, bg_f)
    assert np.abs(dark_r - dark_f).max() < 35, (dark_r, dark_f)


# -- command ----------------------------------------------------------------------------------------

def test_cli_synth_writes_the_archives(tmp_path, capsys):
    assert cli.main(["synth", str(tmp_path), "--scale", "0.02", "--seed", "3", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "synthetic_truth.csv" in out and "near_duplicate" in out
    rows = synthetic.read_truth(tmp_path / synthetic.TRUTH_FILE)
    assert {r["file"] for r in rows} == {p.name for p in tmp_path.glob("*.zip")}
