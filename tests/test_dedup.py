"""Tests of wbc.dedup (features, candidate search, verification, groups) and `wbc dedup`."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wbc import LABELS
from wbc.dedup import across, candidates, conflicts, fingerprints, groups, verify
from wbc.core.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Drawn smear fields: a centred dark "white cell" among pale "red cells"
# --------------------------------------------------------------------------------------------

SIDE = 160


def smear(seed: int, side: int = 2 * SIDE) -> np.ndarray:
    """A large RGB field (side x side): pale red discs scattered on a light background."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side, 3), (236, 222, 214), np.uint8)
    for _ in range(45):
        x, y = (int(v) for v in rng.integers(0, side, 2))
        r = int(rng.integers(12, 20))
        cv2.circle(img, (x, y), r, (205, 150, 160), -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), r // 2, (222, 185, 190), -1, cv2.LINE_AA)
    c = side // 2
    cv2.circle(img, (c, c), 30, (200, 170, 200), -1, cv2.LINE_AA)  # every field: a similar centred cell
    cv2.ellipse(img, (c, c), (18, 12), int(rng.integers(0, 180)), 0, 360, (90, 50, 130), -1, cv2.LINE_AA)
    return img


def view(field: np.ndarray, dx: float = 0, dy: float = 0, zoom: float = 1.0, blur: float = 0.0,
         quality: int = 92) -> bytes:
    """JPEG of a SIDE x SIDE view of `field` centred at its centre + (dx, dy), magnified by `zoom`."""
    h = field.shape[0]
    c, cs = (h - 1) / 2, (SIDE - 1) / 2
    m = np.array([[zoom, 0, cs - zoom * (c + dx)], [0, zoom, cs - zoom * (c + dy)]])
    out = cv2.warpAffine(field, m, (SIDE, SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if blur:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def planted(n_distinct: int = 40, seed: int = 0) -> tuple[dict[str, bytes], dict[str, str]]:
    """Distinct fields + 3 re-imaged fields (2 views each) + 1 byte-identical copy: (key -> bytes, key -> cell)."""
    images, truth = {}, {}
    for s in range(n_distinct):
        images[f"d{s:03d}.jpg"] = view(smear(1000 + s))
        truth[f"d{s:03d}.jpg"] = f"d{s}"
    for g, (dx, dy, zoom, blur) in enumerate([(10, -6, 1.0, 0.0), (-8, 9, 1.06, 0.8), (5, 5, 0.95, 1.2)]):
        f = smear(2000 + g)
        images[f"g{g}_a.jpg"], images[f"g{g}_b.jpg"] = view(f), view(f, dx, dy, zoom, blur, quality=80)
        truth[f"g{g}_a.jpg"] = truth[f"g{g}_b.jpg"] = f"g{g}"
    images["d000_copy.jpg"] = images["d000.jpg"]
    truth["d000_copy.jpg"] = "d0"
    return images, truth


def pair_set(res: groups.GroupResult, keys: list[str]) -> set[tuple[str, str]]:
    """All (a, b) key pairs (a < b) that share a group."""
    out = set()
    for g in np.unique(res.group):
        m = sorted(keys[x] for x in np.flatnonzero(res.group == g))
        out.update((a, b) for x, a in enumerate(m) for b in m[x + 1:])
    return out


def true_pairs(truth: dict[str, str]) -> set[tuple[str, str]]:
    keys = sorted(truth)
    return {(a, b) for x, a in enumerate(keys) for b in keys[x + 1:] if truth[a] == truth[b]}


@pytest.fixture(scope="module")
def drawn():
    images, truth = planted()
    keys = sorted(images)
    return images, truth, fingerprints.hash_images(images.__getitem__, keys, workers=1)


def test_verified_mode_finds_reimaged_fields_not_lookalike_cells(drawn):
    images, truth, f = drawn
    res = groups.find_groups(f, "verified")
    assert pair_set(res, f.keys) == true_pairs(truth)
    assert res.keep.sum() == len(set(truth.values()))
    # every field has the same kind of centred cell: the hash rule alone cannot tell them apart
    paper = groups.find_groups(f, "paper")
    assert paper.pairs["exact"].sum() == 1 and paper.n_confirmed >= 1


def test_features_rows_errors_and_sharpness(drawn):
    images, truth, f = drawn
    assert len(f) == len(images) and f.keys == sorted(images) and not f.errors
    ref = imagehash.average_hash(Image.open(io.BytesIO(images[f.keys[0]])))
    assert int(f.ahash[0]) == int(str(ref), 16)
    blurred = fingerprints.hash_images({"s": view(smear(5)), "b": view(smear(5), blur=2.0)}.__getitem__, ["s", "b"],
                                parts=("paper", "sharpness"))
    assert blurred.sharpness[0] > blurred.sharpness[1] > 0 and not blurred.has_verify
    bad = fingerprints.hash_images({"ok": images[f.keys[0]], "bad": b"not an image"}.__getitem__, ["bad", "ok"])
    assert bad.keys == ["ok"] and list(bad.errors) == ["bad"]
    with pytest.raises(ConfigError):
        fingerprints.hash_images(images.__getitem__, f.keys, parts=("sharpness",))


def test_spilled_features_in_chunks_equal_in_memory_features(drawn, tmp_path, monkeypatch):
    """Features streamed to disk (memory-mapped, pages released per chunk) in small chunks, with an
    unreadable image inside a chunk, are the in-memory features, and give the same groups."""
    images, truth, f = drawn
    monkeypatch.setattr(fingerprints, "CHUNK", 5)
    broken = {**images, "zz_broken.jpg": b"\xff\xd8 not a jpeg"}
    keys = sorted(broken)
    spilled = fingerprints.hash_images(broken.__getitem__, keys, workers=2, spill_dir=tmp_path)
    assert spilled.keys == f.keys and list(spilled.errors) == ["zz_broken.jpg"]
    for name in ("thumbs", "coarse", "embed"):
        arr = getattr(spilled, name)
        assert isinstance(arr, np.memmap), name
        np.testing.assert_array_equal(arr, getattr(f, name))
    for name in ("sha256", "ahash", "phash", "has_paper"):
        np.testing.assert_array_equal(getattr(spilled, name), getattr(f, name))
    assert not list(tmp_path.iterdir())  # the spill files are unlinked: they live as long as the mapping
    std = fingerprints.standardise(spilled.embed)  # block by block, spilled as well
    assert isinstance(std, np.memmap)
    np.testing.assert_allclose(std, fingerprints.standardise(f.embed), atol=2e-5)
    both = fingerprints.standardise(spilled.embed[:5], (spilled.embed[:5], spilled.embed[5:]))
    np.testing.assert_allclose(both, fingerprints.standardise(f.embed[:5], np.asarray(f.embed)), atol=2e-5)
    for mode in groups.MODES:
        a, b = groups.find_groups(spilled, mode), groups.find_groups(f, mode)
        assert (a.group == b.group).all() and (a.keep == b.keep).all()


def test_verified_features_fill_paper_features_of_group_members_only(drawn):
    images, truth, f = drawn
    v = fingerprints.hash_images(images.__getitem__, f.keys, workers=1, parts=fingerprints.PARTS["verified"])
    assert not v.has_paper.any() and np.isnan(v.sharpness).all()
    np.testing.assert_array_equal(v.thumbs, f.thumbs)  # the same verification features either way
    res = groups.find_groups(v, "verified")
    in_group = res.group_sizes() > 1
    cells = pd.Series(truth).value_counts()
    assert in_group.sum() == int(cells[cells > 1].sum()) and (v.has_paper == in_group).all() and (np.isnan(v.sharpness) == ~in_group).all()
    full = groups.find_groups(f, "verified")
    assert (res.group == full.group).all() and (res.keep == full.keep).all()
    assert (v.ahash[in_group] == f.ahash[in_group]).all()
    np.testing.assert_allclose(v.sharpness[in_group], fingerprints.hash_images(
        images.__getitem__, [k for k, g in zip(f.keys, in_group) if g], parts=("paper", "sharpness")).sharpness)
    with pytest.raises(ConfigError, match="verification features"):
        groups.find_groups(fingerprints.hash_images(images.__getitem__, f.keys[:3], parts=("paper",)), "verified")
    paper = fingerprints.hash_images(images.__getitem__, f.keys, workers=1, parts=fingerprints.PARTS["paper"])
    res = groups.find_groups(paper, "paper")
    assert paper.has_paper.all() and (np.isfinite(paper.sharpness) == (res.group_sizes() > 1)).all()
    assert np.isnan(res.pairs["score"]).all()  # no verification features: no verification score


def test_coarse_screen_and_parallel_verification_change_nothing(drawn):
    images, truth, f = drawn
    p = groups._params("verified", {})
    df = groups.candidate_pairs(f, "verified", p)
    one = groups.confirm(f, df, "verified", p)
    # no screening: every candidate verified at full size; the confirmed pairs are the same
    unscreened = groups.confirm(f, df, "verified", {**p, "screen_threshold": -1.0})
    assert one["screened_out"].any() and not unscreened["screened_out"].any()
    assert (one["confirmed"] == unscreened["confirmed"]).all()
    assert not (one["confirmed"] & one["screened_out"]).any()
    ii, jj = df["i"].to_numpy(), df["j"].to_numpy()
    sp = verify.spectra(f.coarse)
    serial = verify.parallel_verify((sp, f.coarse, ii, jj, sp, f.coarse, 0.3), workers=1)
    forked = verify.parallel_verify((sp, f.coarse, ii, jj, sp, f.coarse, 0.3), workers=2, min_pairs=8)
    np.testing.assert_array_equal(serial[0], forked[0])
    np.testing.assert_array_equal(serial[1], forked[1])


def test_draft_decode_is_reduced_for_jpeg_only():
    from wbc.data.store import decode_image

    rgb = smear(7, side=360)
    jpg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(jpg, format="JPEG", quality=90)
    Image.fromarray(rgb).save(png, format="PNG")
    assert decode_image(jpg.getvalue()).size == (360, 360)
    assert decode_image(jpg.getvalue(), draft=(64, 64)).size == (90, 90)  # 1/4: the smallest scale >= 64
    assert decode_image(png.getvalue(), draft=(64, 64)).size == (360, 360)


# --------------------------------------------------------------------------------------------
# Search, components, conflicts
# --------------------------------------------------------------------------------------------

def test_hamming_pairs_equal_the_double_loop():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**63, 300, dtype=np.uint64) & np.uint64(0xFFFF)  # many close codes
    b = rng.integers(0, 2**63, 200, dtype=np.uint64) & np.uint64(0xFFFF)
    dist = lambda x, y: bin(int(x) ^ int(y)).count("1")  # noqa: E731
    i, j = candidates.hamming_pairs(a, 4, block=1000)
    assert set(zip(i.tolist(), j.tolist())) == {(x, y) for x in range(300) for y in range(x + 1, 300)
                                                if dist(a[x], a[y]) < 4}
    i, j = candidates.hamming_pairs(a, 4, b, block=777)
    assert set(zip(i.tolist(), j.tolist())) == {(x, y) for x in range(300) for y in range(200)
                                                if dist(a[x], b[y]) < 4}


def test_knn_pairs_exact_with_the_sampled_floor():
    rng = np.random.default_rng(4)
    emb = fingerprints.standardise(rng.normal(size=(1500, 12)).astype(np.float32))
    i, j = candidates.knn_pairs(emb, 5, block=400)  # 1500 >= 64 * 5: the sampled lower bound is used
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    want = set()
    for x in range(len(emb)):
        for y in np.argsort(-sim[x], kind="stable")[:5]:
            want.add((min(x, int(y)), max(x, int(y))))
    assert set(zip(i.tolist(), j.tolist())) == want


def test_knn_pairs_across_two_sets_both_directions():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 8)).astype(np.float32)
    b = rng.normal(size=(7, 8)).astype(np.float32)
    i, j = candidates.knn_pairs(a, 2, b)
    got = set(zip(i.tolist(), j.tolist()))
    sim = a @ b.T
    want = {(x, int(y)) for x in range(30) for y in np.argsort(-sim[x])[:2]}
    want |= {(int(x), y) for y in range(7) for x in np.argsort(-sim[:, y])[:2]}
    assert got == want


def test_knn_pairs_zoomed_rows_query_the_plain_ones():
    rng = np.random.default_rng(2)
    emb = fingerprints.standardise(rng.normal(size=(200, 10)).astype(np.float32))
    zoomed = fingerprints.standardise(rng.normal(size=(200, 10)).astype(np.float32))
    i, j = candidates.knn_pairs(emb, 3, zoomed=zoomed, kz=4)
    sim, zsim = emb @ emb.T, zoomed @ emb.T
    np.fill_diagonal(sim, -np.inf)
    np.fill_diagonal(zsim, -np.inf)  # an image's own zoomed view is not a pair
    want = {(min(x, int(y)), max(x, int(y))) for x in range(200) for y in np.argsort(-sim[x], kind="stable")[:3]}
    want |= {(min(x, int(y)), max(x, int(y))) for x in range(200) for y in np.argsort(-zsim[x], kind="stable")[:4]}
    assert set(zip(i.tolist(), j.tolist())) == want
    assert set(zip(*candidates.knn_pairs(emb, 3, zoomed=zoomed, kz=0))) < want  # kz=0: the plain pairs only
    # across two sets: each set's zoomed rows query the other's plain rows
    b, zb = emb[:20], zoomed[:20]
    i, j = candidates.knn_pairs(emb, 1, b, zoomed=zoomed, zoomed_b=zb, kz=2)
    cross = {(x, int(y)) for x in range(200) for y in np.argsort(-(zoomed @ b.T)[x])[:2]}
    cross |= {(int(x), y) for y in range(20) for x in np.argsort(-(zb @ emb.T)[y])[:2]}
    assert cross <= set(zip(i.tolist(), j.tolist()))


def test_zoomed_embedding_finds_copies_at_another_magnification():
    """Fields re-imaged 15 % larger and moved up to 12 %: each image's zoomed-in embedding lies much
    closer to its copy than its plain embedding does, so one zoomed neighbour finds more copies than a
    second plain neighbour at about the same number of candidates."""
    images = {f"d{s:03d}.jpg": view(smear(3000 + s)) for s in range(120)}
    rng = np.random.default_rng(0)
    for g in range(12):
        field = smear(5000 + g)
        dx, dy = rng.uniform(-20, 20, 2)
        images[f"g{g:02d}_a.jpg"], images[f"g{g:02d}_b.jpg"] = view(field), view(field, dx, dy, 1.15, 0.6, quality=85)
    f = fingerprints.hash_images(images.__getitem__, sorted(images), workers=1, parts=("verify",))
    plain, zoomed = fingerprints.standardise(f.embed), fingerprints.standardise(f.embed_zoomed, f.embed)
    ab = [(f.keys.index(f"g{g:02d}_a.jpg"), f.keys.index(f"g{g:02d}_b.jpg")) for g in range(12)]
    assert all(zoomed[a] @ plain[b] > plain[a] @ plain[b] + 0.1 for a, b in ab)

    def found(**params):
        df = groups.candidate_pairs(f, "verified", groups._params("verified", params))
        pairs = set(zip(df["i"].tolist(), df["j"].tolist()))
        return sum((min(a, b), max(a, b)) in pairs for a, b in ab), len(df)

    (two_plain, n_plain), (with_zoom, n_zoom) = found(knn=2, knn_zoom=0), found(knn=1, knn_zoom=1)
    assert with_zoom >= two_plain + 4 and n_zoom < 1.3 * n_plain
    res = groups.find_groups(f, "verified", knn=1, knn_zoom=1)
    assert sum(res.group[a] == res.group[b] for a, b in ab) == with_zoom  # each found copy is confirmed
    assert len(set(res.group.tolist())) == len(images) - with_zoom         # and nothing else is merged


def test_components_and_deterministic_kept_choice():
    # 0-1-2 chain, 3 alone, 4-5 pair; 6-4 joins the pair
    comp = groups.components(7, np.array([0, 1, 4, 6]), np.array([1, 2, 5, 4]))
    assert comp.tolist() == [0, 0, 0, 1, 2, 2, 2]
    sharp = np.array([1.0, 3.0, 3.0, 0.5, 2.0, 2.0, 1.0])
    keys = ["c", "b", "a", "d", "z", "y", "x"]
    keep = groups.choose_kept(comp, sharp, keys)
    assert np.flatnonzero(keep).tolist() == [2, 3, 5]  # ties on sharpness -> smallest key


def _result(group: list[int]) -> groups.GroupResult:
    g = np.array(group)
    keys = [f"k{x}" for x in range(len(g))]
    return groups.GroupResult("verified", g, groups.choose_kept(g, np.zeros(len(g)), keys), pd.DataFrame(), {})


def test_resolve_conflicts_drop_and_majority():
    res = _result([0, 0, 0, 1, 1, 2, 3, 3])
    labels = ["eosinophil", "eosinophil", "neutrophil", "monocyte", "lymphocyte", "basophil", "basophil", "basophil"]
    sharp = np.array([1.0, 2.0, 5.0, 1.0, 1.0, 1.0, 3.0, 1.0])
    keys = [f"k{x}" for x in range(8)]
    drop = conflicts.resolve_conflicts(res, labels, sharp, keys, "drop")
    assert drop.conflict.tolist() == [True] * 5 + [False] * 3
    assert drop.keep.tolist() == [False] * 5 + [True, True, False]
    assert drop.reason.tolist() == [conflicts.LABEL_CONFLICT] * 5 + ["", "", conflicts.DUPLICATE]
    assert drop.winner.tolist() == [""] * 8
    major = conflicts.resolve_conflicts(res, labels, sharp, keys, "majority")
    # group 0: majority eosinophil, the sharpest eosinophil kept (not the sharper neutrophil); group 1: a tie
    assert major.keep.tolist() == [False, True, False, False, False, True, True, False]
    assert major.reason.tolist() == [conflicts.DUPLICATE, "", conflicts.MINORITY_LABEL, conflicts.LABEL_TIE, conflicts.LABEL_TIE,
                                     "", "", conflicts.DUPLICATE]
    assert major.winner.tolist() == ["eosinophil"] * 3 + [""] * 5
    assert (major.conflict == drop.conflict).all()
    with pytest.raises(ConfigError):
        conflicts.resolve_conflicts(res, labels, sharp, keys, "vote")
    with pytest.raises(ConfigError):
        groups.find_groups(fingerprints.hash_images(bytes, []), "fuzzy")


def test_cross_duplicates_between_sets():
    images, truth = planted(n_distinct=12, seed=1)
    sets = {"train": [k for k in sorted(images) if k.endswith("_a.jpg") or k in ("d000.jpg", "d001.jpg", "d002.jpg")],
            "test": [k for k in sorted(images) if k.endswith("_b.jpg") or k == "d000_copy.jpg" or k.startswith("d01")]}
    loaders = {name: (images.__getitem__, keys) for name, keys in sets.items()}
    df = across.cross_duplicates(loaders, {"mode": "verified", "workers": 1})
    got = sorted(zip(df["id_a"], df["id_b"]))
    assert got == sorted([("d000_copy.jpg", "d000.jpg")] + [(f"g{g}_b.jpg", f"g{g}_a.jpg") for g in range(3)])
    assert (df["set_a"] == "test").all() and (df["set_b"] == "train").all()


# --------------------------------------------------------------------------------------------
# `wbc dedup`
# --------------------------------------------------------------------------------------------

def test_cli_dedup_folder_with_unreadable_file_and_empty_folder(tmp_path, capsys):
    from wbc.apps.cli import main

    images, truth = planted(n_distinct=6)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for k, data in images.items():
        (tmp_path / "imgs" / ("sub" if k.startswith("g") else "") / k).write_bytes(data)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    rc = main(["dedup", str(tmp_path / "imgs"), "--out", str(tmp_path / "g.csv"), "--workers", "1"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "g.csv", keep_default_na=False)
    assert len(table) == len(images) + 1
    assert table.loc[table["path"] == "broken.jpg", "error"].iloc[0] != ""
    ok = table[table["error"] == ""].set_index("path")
    assert ok.loc["sub/g1_a.jpg", "group"] == ok.loc["sub/g1_b.jpg", "group"]
    assert ok.loc["d000.jpg", "group"] == ok.loc["d000_copy.jpg", "group"] != ok.loc["d001.jpg", "group"]
    assert int(ok["keep"].sum()) == len(set(truth.values()))
    assert "unreadable: broken.jpg" in capsys.readouterr().err
    in_group = ok["group_size"] > 1
    assert (ok.loc[in_group, "sharpness"] != "").all() and (ok.loc[~in_group, "sharpness"] == "").all()
    assert main(["dedup", str(tmp_path / "imgs"), "--out", str(tmp_path / "all.csv"), "--workers", "1",
                 "--all-sharpness"]) == 0
    full = pd.read_csv(tmp_path / "all.csv", keep_default_na=False).set_index("path")
    assert (full.loc[ok.index, "sharpness"] != "").all() and (full.loc[ok.index, "ahash"] != "").all()
    assert (full.loc[ok.index, "group"] == ok["group"]).all()
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["dedup", str(tmp_path / "empty"), "--out", str(tmp_path / "e.csv")]) == 2
    assert "no image files" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Synthetic archives: planted groups
# --------------------------------------------------------------------------------------------

def test_synthetic_planted_groups_found(tmp_path):
    from wbc.data import synthetic

    paths = synthetic.generate(tmp_path, scale=0.3, workers=1)
    rows = [r for r in synthetic.read_truth(paths[-1]) if r["kind"] != "broken"]
    zips = {p.name: zipfile.ZipFile(p) for p in paths[:-1]}
    keys = [(r["file"], r["member"]) for r in rows]
    f = fingerprints.hash_images(lambda k: zips[k[0]].read(k[1]), keys, workers=1)
    cell = {(r["file"], r["member"]): r["group"] or f"{r['file']}/{r['member']}" for r in rows}
    truth = {f"{k[0]}/{k[1]}": cell[k] for k in f.keys}
    res = groups.find_groups(f, "verified")
    got = pair_set(res, [f"{k[0]}/{k[1]}" for k in f.keys])
    want = true_pairs(truth)
    assert len(want) >= 10 and not f.errors
    assert len(got & want) / len(want) >= 0.95 and got <= want  # high recall, no false pair


# --------------------------------------------------------------------------------------------
# Real PBC images
# --------------------------------------------------------------------------------------------

def _pbc_members(pbc_zip: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(pbc_zip) as z:
        names = sorted(n for n in z.namelist() if n.count("/") == 2 and n.split("/")[1] in LABELS
                       and n.lower().endswith(".jpg") and not n.split("/")[2].startswith("."))
        return {n.split("/", 1)[1]: z.read(n) for n in names}


def test_hashes_bit_identical_with_imagehash(pbc_zip):
    members = _pbc_members(pbc_zip)
    keys = sorted(members)[::350]
    f = fingerprints.hash_images(members.__getitem__, keys, workers=1)
    assert len(f) == len(keys) >= 25
    for x, k in enumerate(keys):
        img = Image.open(io.BytesIO(members[k]))
        assert f"{int(f.ahash[x]):016x}" == str(imagehash.average_hash(img))
        assert f"{int(f.phash[x]):016x}" == str(imagehash.phash(img))


@pytest.fixture(scope="module")
def pbc(pbc_zip):
    """Features of the real PBC five classes (one pass shared by the tests below)."""
    members = _pbc_members(pbc_zip)
    return members, fingerprints.hash_images(members.__getitem__, sorted(members))


#: Pairs of the paper's 60 non-identical hash pairs that are the same field imaged twice (checked by eye).
SAME_FIELD = {("eosinophil/EO_246684.jpg", "eosinophil/EO_409717.jpg"),
              ("eosinophil/EO_464387.jpg", "eosinophil/EO_800344.jpg"),
              ("monocyte/MO_231316.jpg", "monocyte/MO_415531.jpg")}


@pytest.mark.slow
def test_paper_mode_on_real_pbc(pbc):
    members, f = pbc
    res = groups.find_groups(f, "paper")
    pairs = res.pairs
    assert res.n_candidates == 74 and res.n_confirmed == 74
    exact = pairs[pairs["exact"]]
    assert len(exact) == 14 and exact["candidate"].all()
    assert all(members[f.keys[i]] == members[f.keys[j]] for i, j in zip(exact["i"], exact["j"]))


@pytest.mark.slow
def test_verified_mode_on_real_pbc(pbc):
    members, f = pbc
    res = groups.find_groups(f, "verified")
    exact = res.pairs[res.pairs["exact"]]
    assert len(exact) == 14 and (res.group[exact["i"]] == res.group[exact["j"]]).all()
    paper = groups.find_groups(f, "paper").pairs
    paper = paper[paper["candidate"] & ~paper["exact"]]
    hash_only = [(f.keys[i], f.keys[j]) for i, j in zip(paper["i"], paper["j"])]
    assert len(hash_only) == 60
    merged = {p for p in hash_only if res.group[f.keys.index(p[0])] == res.group[f.keys.index(p[1])]}
    assert merged == SAME_FIELD  # the other 57 distinct cells stay apart
    x, y = f.keys.index("eosinophil/EO_225902.jpg"), f.keys.index("neutrophil/BNE_191112.jpg")
    assert res.group[x] == res.group[y]
    labels = [k.split("/")[0] for k in f.keys]
    out = conflicts.resolve_conflicts(res, labels, f.sharpness, f.keys, "drop")
    assert out.conflict[x] and out.conflict[y] and not out.keep[x] and not out.keep[y]
    # the verification is strict: few groups beyond the byte-identical ones
    assert res.n_confirmed < 60
