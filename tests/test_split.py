"""Tests of the split stage (wbc.dataset: split, assign, audit, pack, summary; `wbc split`): stratification, determinism, errors, packing,
reports and the leakage audit, on small generated manifests and image stores."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from wbc import LABELS
from wbc.dataset import assign, audit, pack, split
from wbc.dataset import summary as split_summary
from wbc.core.errors import ConfigError, WbcError

MANIFEST_COLUMNS = ["id", "source", "role", "member", "class_folder", "label", "sha256", "bytes", "width", "height",
                    "format", "mode", "status", "reason", "shard", "offset", "length"]


def make_kept(counts: dict[str, dict[str, int]], roles: dict[str, str] | None = None) -> pd.DataFrame:
    """A manifest-like frame: counts[source][label] rows, fake store locations."""
    rows = []
    for source, by_label in counts.items():
        for label, n in by_label.items():
            for i in range(n):
                member = f"{label.title()}/{label[:2]}_{i:05d}.jpg"
                rows.append({"id": f"{source}/{member}", "source": source, "role": (roles or {}).get(source, "pool"),
                             "member": member, "class_folder": label.title(), "label": label, "status": "ok",
                             "reason": "", "shard": 0, "offset": len(rows) * 10, "length": 10})
    return pd.DataFrame(rows).sort_values("id").reset_index(drop=True)


UNEVEN = {"a": {"basophil": 37, "eosinophil": 101, "lymphocyte": 260, "monocyte": 55, "neutrophil": 311},
          "b": {"basophil": 13, "eosinophil": 40, "lymphocyte": 99, "monocyte": 21, "neutrophil": 120}}


# ---------------------------------------------------------------------------------------------
# Sizes and apportionment
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, n, expected", [(0.15, 1000, 150), (0.15, 1001, 150), (0.5, 3, 2), (3200, 24812, 3200),
                                               ("0.2", 10, 2), (0, 10, 0), (7.0, 10, 7)])
def test_resolve_size(spec, n, expected):
    assert assign.resolve_size(spec, n, "val") == expected


@pytest.mark.parametrize("spec", [-1, 2.5, "abc", None, True, 11, float("nan")])
def test_resolve_size_rejects(spec):
    with pytest.raises(ConfigError, match="split.val"):
        assign.resolve_size(spec, 10, "val")


def test_apportion_exact_total_and_within_one_of_quota():
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = {lab: int(rng.integers(0, 500)) for lab in LABELS}
        n = sum(counts.values())
        if n == 0:
            continue
        total = int(rng.integers(0, n + 1))
        got = assign.apportion(counts, total)
        assert sum(got.values()) == total
        for lab in LABELS:
            quota = total * counts[lab] / n
            assert math.floor(quota) <= got[lab] <= math.ceil(quota), (counts, total, got)


def test_apportion_known_case():
    # quotas 3.2, 2.5, 4.3 -> floors 3, 2, 4 (9), one left: largest remainder 0.5 -> b
    assert assign.apportion({"a": 32, "b": 25, "c": 43}, 10) == {"a": 3, "b": 3, "c": 4}


# ---------------------------------------------------------------------------------------------
# Stratified assignment
# ---------------------------------------------------------------------------------------------

def per_class(frame: pd.DataFrame, name: str) -> dict[str, int]:
    sub = frame[frame["split"] == name]
    return {lab: int((sub["label"] == lab).sum()) for lab in LABELS}


@pytest.mark.parametrize("val, test", [(0.15, 0.15), (200, 200), (150, 90), (0.1, 0.25)])
def test_stratified_counts_within_one_of_target(val, test):
    kept = make_kept(UNEVEN)
    res = assign.assign_splits(kept, mode="stratified", val=val, test=test, seed=1)
    n = len(kept)
    pool = {lab: int((kept["label"] == lab).sum()) for lab in LABELS}
    for name, spec in (("val", val), ("test", test)):
        total = assign.resolve_size(spec, n, name)
        got = per_class(res.frame, name)
        assert sum(got.values()) == total
        for lab in LABELS:
            assert abs(got[lab] - total * pool[lab] / n) < 1 + 1e-9
    if val == test:  # same class distribution in val and test
        assert per_class(res.frame, "val") == per_class(res.frame, "test")


def test_counts_reconcile_with_kept():
    kept = make_kept(UNEVEN | {"ext": {lab: 7 for lab in LABELS}}, roles={"ext": "external"})
    res = assign.assign_splits(kept, val=100, test=100, seed=3)
    frame = res.frame
    assert list(frame.columns) == assign.SPLIT_COLUMNS
    assert sorted(frame["id"]) == sorted(kept["id"]) and frame["id"].is_unique
    merged = frame.merge(kept[["id", "source", "label"]], on="id", suffixes=("", "_kept"))
    assert (merged["source"] == merged["source_kept"]).all() and (merged["label"] == merged["label_kept"]).all()
    # external images stay in their own set, named by the source; pools never go there
    assert set(frame.loc[frame["source"] == "ext", "split"]) == {"ext"}
    assert set(frame.loc[frame["source"] != "ext", "split"]) == {"train", "val", "test"}
    assert res.sets == ["train", "val", "test", "ext"]
    summary = split_summary.summarize(res, kept_rows=len(kept))
    assert summary["images"] == len(kept) == sum(summary["totals"].values())
    for source, by_label in (UNEVEN | {"ext": {lab: 7 for lab in LABELS}}).items():
        for lab, n in by_label.items():
            assert sum(summary["counts"][s][lab].get(source, 0) for s in res.sets) == n


def test_index_is_contiguous_and_sorted_by_id():
    res = assign.assign_splits(make_kept(UNEVEN), val=0.2, test=0.2, seed=5)
    for name, sub in res.frame.groupby("split"):
        assert sub["index"].tolist() == list(range(len(sub)))
        assert sub["id"].tolist() == sorted(sub["id"])


def test_same_seed_same_split_other_seed_differs():
    kept = make_kept(UNEVEN)
    a = assign.assign_splits(kept, val=0.15, test=0.15, seed=42).frame
    b = assign.assign_splits(kept.sample(frac=1.0, random_state=9), val=0.15, test=0.15, seed=42).frame
    c = assign.assign_splits(kept, val=0.15, test=0.15, seed=43).frame
    pd.testing.assert_frame_equal(a, b)  # input row order does not matter
    assert (a["split"] != c["split"]).any()
    assert per_class(a, "val") == per_class(c, "val")  # same targets, other images


def test_too_few_images_names_the_class_and_counts():
    # 402 images, val = test = 121: basophil quota 0.60 -> 1 (largest remainder) each, none left for train
    counts = {"a": {"basophil": 2, "eosinophil": 100, "lymphocyte": 100, "monocyte": 100, "neutrophil": 100}}
    with pytest.raises(assign.SplitError, match=r"class 'basophil' has 2 images.*val 1 \+ test 1"):
        assign.assign_splits(make_kept(counts), val=0.3, test=0.3, seed=0)


def test_val_plus_test_larger_than_pool():
    with pytest.raises(assign.SplitError, match="exceed"):
        assign.assign_splits(make_kept(UNEVEN), val=700, test=700, seed=0)


def test_unknown_mode():
    with pytest.raises(ConfigError, match="stratified, given"):
        assign.assign_splits(make_kept(UNEVEN), mode="random")


# ---------------------------------------------------------------------------------------------
# Given mode
# ---------------------------------------------------------------------------------------------

def test_given_mode_keeps_the_sources_own_split():
    counts = {"synth_raabin_train": {lab: 40 + 10 * i for i, lab in enumerate(LABELS)},
              "synth_raabin_testa": {lab: 9 for lab in LABELS},
              "synth_raabin_testb": {lab: 5 for lab in LABELS}}
    kept = make_kept(counts, roles={"synth_raabin_testb": "external"})
    res = assign.assign_splits(kept, mode="given", val=0.2, test=0.5, seed=0)  # test ignored in given mode
    f = res.frame
    assert set(f.loc[f["source"] == "synth_raabin_testa", "split"]) == {"test"}
    assert set(f.loc[f["source"] == "synth_raabin_testb", "split"]) == {"synth_raabin_testb"}
    assert set(f.loc[f["source"] == "synth_raabin_train", "split"]) == {"train", "val"}
    n_train = sum(counts["synth_raabin_train"].values())
    assert (f["split"] == "val").sum() == round(0.2 * n_train)
    for lab in LABELS:  # val stratified over the train part
        assert abs(per_class(f, "val")[lab] - 0.2 * counts["synth_raabin_train"][lab]) < 1 + 1e-9


def test_given_mode_unknown_source_is_a_clear_error():
    with pytest.raises(ConfigError, match="no_such_source"):
        assign.assign_splits(make_kept({"no_such_source": {lab: 5 for lab in LABELS}}), mode="given")


# ---------------------------------------------------------------------------------------------
# Reading the dedup output
# ---------------------------------------------------------------------------------------------

def write_manifest(df: pd.DataFrame, path) -> None:
    full = df.reindex(columns=MANIFEST_COLUMNS).astype(object).fillna("")
    full.to_csv(path, index=False)


def test_load_kept_filters_unusable_rows(tmp_path):
    kept = make_kept({"a": {lab: 3 for lab in LABELS}})
    extra = kept.iloc[:3].copy()
    extra["id"] = ["a/x1.jpg", "a/x2.jpg", "a/x3.jpg"]
    extra.loc[extra.index[0], "label"] = "excluded"
    extra.loc[extra.index[1], "status"] = "quarantined"
    extra.loc[extra.index[2], ["shard", "offset", "length"]] = -1
    write_manifest(pd.concat([kept, extra]), tmp_path / "kept.csv")
    got = assign.load_kept(tmp_path / "kept.csv")
    assert got["id"].tolist() == sorted(kept["id"])
    assert got["shard"].dtype == np.int64


def test_load_kept_errors(tmp_path):
    with pytest.raises(WbcError, match="not found"):
        assign.load_kept(tmp_path / "missing.csv")
    pd.DataFrame({"id": ["a"], "source": ["s"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(WbcError, match="missing column"):
        assign.load_kept(tmp_path / "bad.csv")


def test_profile_defaults_reproduce_the_seed_setup():
    assert assign.profile_split_defaults("full") == {"val": 3200, "test": 3200}
    assert assign.profile_split_defaults(None) == {"val": 0.15, "test": 0.15}


def test_full_profile_sizes_on_seed_project_counts():
    """The seed project's 24,812 images (PBC five classes + Raabin Train + TestA) -> 18,412/3,200/3,200."""
    pbc = {"basophil": 1218, "eosinophil": 3117, "lymphocyte": 1214, "monocyte": 1420, "neutrophil": 3329}
    raabin = {"basophil": 212 + 89, "eosinophil": 744 + 322, "lymphocyte": 2427 + 1034,  # Train + TestA
              "monocyte": 561 + 234, "neutrophil": 6231 + 2660}
    counts = {lab: pbc[lab] + raabin[lab] for lab in LABELS}
    assert sum(counts.values()) == 24812
    val_c, test_c = assign.class_targets(counts, 3200, 3200)
    assert sum(val_c.values()) == sum(test_c.values()) == 3200 and val_c == test_c
    assert sum(counts.values()) - 2 * 3200 == 18412
    # quotas 195.91, 539.48, 602.93, 285.67, 1576.01: floors sum to 3197, the 3 largest remainders get +1
    assert val_c == {"basophil": 196, "eosinophil": 539, "lymphocyte": 603, "monocyte": 286, "neutrophil": 1576}


# ---------------------------------------------------------------------------------------------
# Packing, reports, audit (real image store)
# ---------------------------------------------------------------------------------------------

def draw_cell(label: str, k: int, size: tuple[int, int] = (90, 70)) -> bytes:
    """A distinct textured JPEG per (label, k): a smooth random colour field with a dark blob."""
    rng = np.random.default_rng([LABELS.index(label), k])
    field = rng.integers(60, 255, (size[1] // 6, size[0] // 6, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize(size, Image.Resampling.BICUBIC)
    x, y = (int(v) for v in rng.integers(10, min(size) - 30, 2))
    ImageDraw.Draw(img).ellipse([x, y, x + 20, y + 18], fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


STORE_COUNTS = {"synth_raabin_train": {lab: 14 + 3 * i for i, lab in enumerate(LABELS)},
                "synth_raabin_testa": {lab: 5 for lab in LABELS},
                "synth_raabin_testb": {lab: 3 for lab in LABELS}}
ROLES = {"synth_raabin_testb": "external"}


def build_store(root, counts=STORE_COUNTS, duplicates: int = 0) -> pd.DataFrame:
    """Write distinct drawn JPEGs into an image store; return the manifest rows (sorted by id).

    `duplicates` > 0 plants that many Test-A images whose bytes copy a Train image of the same class.
    """
    from wbc.data.store import StoreWriter

    kept = make_kept(counts, roles=ROLES)
    kept["sha256"] = ""
    data = [draw_cell(row.label, k, size=(90 + k % 3 * 7, 70 + k % 5 * 4)) for k, row in enumerate(kept.itertuples())]
    train_bytes: dict[str, list[bytes]] = {}
    for row, blob in zip(kept.itertuples(), data):
        if row.source == "synth_raabin_train":
            train_bytes.setdefault(row.label, []).append(blob)
    planted = 0
    for k, row in enumerate(kept.itertuples()):  # second pass: Test-A rows sort before Train rows
        if planted < duplicates and row.source == "synth_raabin_testa" and train_bytes.get(row.label):
            data[k] = train_bytes[row.label].pop(0)
            planted += 1
    assert planted == duplicates, f"could plant only {planted} of {duplicates} duplicates"
    with StoreWriter(root, shard_bytes=1 << 16) as writer:
        locs = [writer.add(blob) for blob in data]
    kept[["shard", "offset", "length"]] = np.array(locs, dtype=np.int64)
    kept["bytes"] = [len(b) for b in data]
    return kept


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A small image store (no duplicates) and its kept.csv: (root, kept frame)."""
    root = tmp_path_factory.mktemp("split_store")
    kept = build_store(root / "store")
    write_manifest(kept, root / "kept.csv")
    return root, kept


@pytest.fixture(scope="module")
def store_run(small_store, tmp_path_factory):
    """One stratified run of the whole stage on the small store: (root, kept, summary, out dir)."""
    root, kept = small_store
    out = tmp_path_factory.mktemp("split_out")
    summary = split.run_split(root / "kept.csv", root / "store", splits_csv=out / "splits.csv",
                           packed_dir=out / "packed", reports_dir=out / "reports", val=0.2, test=0.2,
                           seed=7, image_size=32, dedup_params={"mode": "verified"}, workers=2)
    return root, kept, summary, out


def test_run_split_outputs_follow_the_contract(store_run):
    from wbc.data.store import decode_image, ImageStore

    root, kept, summary, out = store_run
    splits = pd.read_csv(out / "splits.csv")
    assert list(splits.columns) == assign.SPLIT_COLUMNS and len(splits) == len(kept)
    meta = json.loads((out / "packed/meta.json").read_text())
    assert meta["classes"] == list(LABELS) and meta["image_size"] == 32
    assert meta["external"] == ["synth_raabin_testb"]
    assert meta["sets"] == {k: int(v) for k, v in splits["split"].value_counts().items()}
    assert len(meta["mean"]) == len(meta["std"]) == 3
    store = ImageStore(root / "store")
    locs = kept.set_index("id")
    for name, n in meta["sets"].items():
        x = np.load(out / f"packed/{name}_x.npy", mmap_mode="r")
        y = np.load(out / f"packed/{name}_y.npy")
        assert x.dtype == np.uint8 and x.shape == (n, 3, 32, 32) and y.dtype == np.int64 and y.shape == (n,)
        rows = splits[splits["split"] == name].sort_values("index")
        assert rows["index"].tolist() == list(range(n))
        assert y.tolist() == [LABELS.index(lab) for lab in rows["label"]]
        for i in (0, n // 2, n - 1):  # row i is the image of splits row (name, i)
            loc = locs.loc[rows["id"].iloc[i]]
            img = decode_image(store.read(int(loc["shard"]), int(loc["offset"]), int(loc["length"])))
            np.testing.assert_array_equal(x[i], pack.square_resize(img, 32))


def test_run_split_reports(store_run):
    root, kept, summary, out = store_run
    saved = json.loads((out / "reports/summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["audit"]["cross_split_duplicates"] == 0
    assert saved["kept_rows"] == saved["images"] == len(kept)
    pool = len(kept[kept["role"] == "pool"])
    assert saved["totals"]["val"] == saved["totals"]["test"] == round(0.2 * pool)
    md = (out / "reports/distribution.md").read_text()
    assert "| class | train | val | test | synth_raabin_testb | all |" in md
    for name in ("distribution.png", "samples.png"):
        with Image.open(out / "reports" / name) as img:
            assert img.format == "PNG" and img.width > 300


def test_square_resize_crops_the_centre():
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    img.paste((0, 0, 255), (10, 0, 20, 10))  # blue centre square
    out = pack.square_resize(img, 5)
    assert out.shape == (3, 5, 5) and out.dtype == np.uint8
    assert (out[2] == 255).all() and (out[0] == 0).all()


def test_packing_is_deterministic_with_one_or_many_workers(small_store, tmp_path):
    root, kept = small_store
    res = assign.assign_splits(kept, val=0.2, test=0.2, seed=7)
    meta1 = pack.pack(res, kept, root / "store", tmp_path / "one", 32, workers=1)
    meta2 = pack.pack(res, kept, root / "store", tmp_path / "two", 32, workers=2)
    assert meta1 == meta2
    for name in res.sets:
        for part in ("x", "y"):
            a = (tmp_path / "one" / f"{name}_{part}.npy").read_bytes()
            assert a == (tmp_path / "two" / f"{name}_{part}.npy").read_bytes()


def test_audit_finds_planted_cross_split_duplicates(tmp_path):
    """Without dedup, Test-A copies of Train images leak in the given split; the audit reports each."""
    kept = build_store(tmp_path / "store", duplicates=3)
    res = assign.assign_splits(kept, mode="given", val=0.2, seed=0)
    pairs = audit.audit_leakage(res, kept, tmp_path / "store", {"mode": "verified", "workers": 1})
    f = res.frame.set_index("id")
    size = kept.set_index("id")["bytes"]
    assert len(pairs) == 3, pairs
    for p in pairs.itertuples():
        assert {p.set_a, p.set_b} <= set(res.sets) and p.set_a != p.set_b
        assert {f.loc[p.id_a, "split"], f.loc[p.id_b, "split"]} == {p.set_a, p.set_b}
        assert "synth_raabin_testa" in (p.id_a.split("/")[0], p.id_b.split("/")[0])
        assert size[p.id_a] == size[p.id_b]
    summary = audit.summarize_audit(pairs)
    assert summary["cross_split_duplicates"] == 3 and sum(summary["by_sets"].values()) == 3


def test_cli_split(store_run, tmp_path, capsys):
    from wbc.apps.cli import main

    root, kept, summary, out = store_run
    rc = main(["split", str(root / "kept.csv"), "--store", str(root / "store"), "--out", str(tmp_path),
               "--val", "0.2", "--test", "0.2", "--seed", "7", "--image-size", "32", "--workers", "1"])
    assert rc == 0
    assert "0 duplicate pair(s)" in capsys.readouterr().out
    a = pd.read_csv(tmp_path / "splits.csv")
    b = pd.read_csv(out / "splits.csv")
    pd.testing.assert_frame_equal(a, b)  # same seed -> identical split
    rc = main(["split", str(root / "kept.csv"), "--store", str(root / "store"), "--out", str(tmp_path / "x"),
               "--val", "0.5", "--test", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "val" in err and "exceed" in err and "pool images" in err


def test_empty_val_set_is_still_packed(small_store, tmp_path):
    root, kept = small_store
    res = assign.assign_splits(kept, val=0, test=0.2, seed=7)
    meta = pack.pack(res, kept, root / "store", tmp_path, 16, workers=1)
    assert meta["sets"]["val"] == 0 and meta["sets"]["test"] == round(0.2 * (kept["role"] == "pool").sum())
    assert np.load(tmp_path / "val_x.npy").shape == (0, 3, 16, 16)
    assert np.load(tmp_path / "val_y.npy").shape == (0,)


@pytest.mark.slow
def test_synthetic_generate_ingest_dedup_split_has_no_leakage(tmp_path):
    """Synthetic data (planted exact/near duplicates) -> ingest -> dedup -> split: zero cross-split pairs.

    Without dedup, the sources' own split leaks (Train scenes re-imaged in Test-A): the audit sees it.
    """
    from wbc.dedup import fingerprints, groups
    from wbc.data import ingest, sources, synthetic
    from wbc.data.store import ImageStore

    synthetic.generate(tmp_path / "raw", scale=0.1, workers=1)
    manifest = ingest.ingest_sources(sources.profile_sources("synthetic"), tmp_path / "raw",
                                     tmp_path / "manifest.csv", tmp_path / "store", {"workers": 1})
    usable = assign.load_kept(tmp_path / "manifest.csv")
    given = assign.assign_splits(usable, mode="given", val=0.15, seed=0)
    leaks = audit.audit_leakage(given, usable, tmp_path / "store", {"mode": "verified", "workers": 1})
    assert len(leaks) > 0 and (leaks["set_a"] != leaks["set_b"]).all()

    store = ImageStore(tmp_path / "store")
    locs = usable.set_index("id")
    feats = fingerprints.hash_images(lambda i: store.read_row(locs.loc[i]), usable["id"].tolist(), workers=1)
    found = groups.find_groups(feats, "verified")
    kept_ids = {k for k, keep in zip(feats.keys, found.keep) if keep}
    kept = manifest[manifest["id"].isin(kept_ids)]
    write_manifest(kept, tmp_path / "kept.csv")
    summary = split.run_split(tmp_path / "kept.csv", tmp_path / "store", splits_csv=tmp_path / "splits.csv",
                           packed_dir=tmp_path / "packed", reports_dir=tmp_path / "reports", val=0.15, test=0.15,
                           seed=42, image_size=16, dedup_params={"mode": "verified", "workers": 1}, workers=1)
    assert summary["images"] == len(kept_ids) < len(usable)
    assert summary["audit"]["cross_split_duplicates"] == 0


def test_leakage_warning_only_for_stratified_leaks():
    leak = {"mode": "stratified", "audit": {"cross_split_duplicates": 2, "by_sets": {"test|train": 2}}}
    assert "2 duplicate pair(s)" in split.leakage_warning(leak) and "test|train: 2" in split.leakage_warning(leak)
    assert split.leakage_warning({**leak, "mode": "given"}) == ""  # the sources' own split is reported as is
    assert split.leakage_warning({"mode": "stratified", "audit": {"cross_split_duplicates": 0, "by_sets": {}}}) == ""
