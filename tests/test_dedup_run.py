"""The dedup stage's bookkeeping on the synthetic data: planted copies removed, label conflicts
dropped, counts reconcile, reports written; on_conflict drop / majority on planted conflicts."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from wbc.dedup import conflicts
from wbc.dedup import run as dedup_run
from wbc.data import ingest, sources, synthetic
from wbc.data.store import StoreWriter


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    raw = root / "raw"
    synthetic.generate(raw, seed=7, scale=0.15)
    srcs = sources.profile_sources("synthetic")
    manifest = ingest.ingest_sources(srcs, raw, root / "manifest.csv", root / "store", {"workers": 0})
    truth = pd.read_csv(raw / "synthetic_truth.csv", dtype=str, keep_default_na=False)
    truth["id"] = truth["source"] + "/" + truth["member"]
    return root, manifest, truth


@pytest.fixture(scope="module", params=["verified", "paper"])
def outcome(request, synth):
    root, manifest, _ = synth
    params = {"mode": request.param, "on_conflict": "drop", "workers": 0}
    return dedup_run.run(manifest, root / "store", params)


def test_counts_reconcile_per_source_and_class(synth, outcome):
    _, manifest, _ = synth
    canonical = manifest[manifest["label"].isin(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"])]
    for src, classes in outcome.summary["sources"].items():
        for label, c in classes.items():
            n_in = int(((canonical["source"] == src) & (canonical["label"] == label)).sum())
            assert c["in"] == n_in
            assert c["in"] == c["kept"] + c["duplicates_removed"] + c["conflicts_dropped"] + c["quarantined"]
    assert outcome.summary["totals"]["kept"] == len(outcome.kept)
    assert outcome.kept["id"].is_unique and set(outcome.kept["id"]) <= set(manifest["id"])
    assert (outcome.kept["status"] == "ok").all()


def test_byte_identical_copies_leave_one_and_conflicts_are_dropped(synth, outcome):
    _, _, truth = synth
    kept = set(outcome.kept["id"])
    for kind in ("exact_copy", "label_conflict"):
        groups = truth[truth["group"].str.startswith("ec" if kind == "exact_copy" else "lc")]
        assert len(groups), f"no planted {kind} at this scale"
        for _, g in groups.groupby("group"):
            n_kept = sum(i in kept for i in g["id"])
            assert n_kept == (1 if kind == "exact_copy" else 0), (kind, g["id"].tolist())
    conflict_ids = set(outcome.groups.loc[outcome.groups["conflict"], "id"])
    lc = truth[truth["group"].str.startswith("lc")]
    assert set(lc["id"]) <= conflict_ids


def test_planted_near_duplicates_found_in_verified_mode(synth):
    root, manifest, truth = synth
    out = dedup_run.run(manifest, root / "store", {"mode": "verified", "on_conflict": "drop"})
    nd = truth[truth["group"].str.startswith("nd")]
    kept = set(out.kept["id"])
    lost_all = [g for g, m in nd.groupby("group") if not any(i in kept for i in m["id"])]
    assert not lost_all, f"cells lost entirely: {lost_all}"
    merged = sum(sum(i in kept for i in m["id"]) == 1 for _, m in nd.groupby("group"))
    assert merged >= 0.8 * nd["group"].nunique()
    # both modes' numbers are reported side by side
    assert set(out.summary["pairs"]) == {"verified", "paper"}


def test_reports_written(tmp_path, synth, outcome):
    root, manifest, _ = synth
    dedup_run.save(outcome, tmp_path / "kept.csv", tmp_path / "reports")
    png = dedup_run.montage(outcome.groups, root / "store", manifest, tmp_path / "reports" / "groups.png")
    assert png.stat().st_size > 1000
    again = ingest.read_manifest(tmp_path / "kept.csv")
    assert list(again["id"]) == list(outcome.kept["id"])
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["totals"]["kept"] == len(again)
    groups = pd.read_csv(tmp_path / "reports" / "groups.csv")
    assert (groups.groupby("group")["kept"].sum() <= 1).all()


# ----------------------------------------------------------------------------- planted label conflicts


def _field(seed: int, side: int = 160) -> Image.Image:
    """A drawn smear field: pale red discs around a centred dark-nucleus cell (different per seed)."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (side, side), (236, 222, 214))
    draw = ImageDraw.Draw(im)
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(0, side, 2))
        r = int(rng.integers(10, 18))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(205, 150, 160))
        draw.ellipse((x - r // 2, y - r // 2, x + r // 2, y + r // 2), fill=(222, 185, 190))
    c, (a, b) = side // 2, (int(v) for v in rng.integers(12, 24, 2))
    draw.ellipse((c - 28, c - 28, c + 28, c + 28), fill=(200, 170, 200))
    draw.ellipse((c - a, c - b, c + a, c + b), fill=(90, 50, 130))
    return im


def _jpeg(im: Image.Image, blur: float = 0.0) -> bytes:
    buf = io.BytesIO()
    (im.filter(ImageFilter.GaussianBlur(blur)) if blur else im).save(buf, "JPEG", quality=92)
    return buf.getvalue()


#: member -> (bytes, label): 3 copies labelled eosinophil, eosinophil, neutrophil (the neutrophil the
#: sharpest), a 1-1 tie lymphocyte/monocyte, a byte-identical basophil pair, 6 distinct cells.
def _planted() -> dict[str, tuple[bytes, str]]:
    three, tie, pair = _field(100), _field(101), _jpeg(_field(102))
    labels = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil", "eosinophil"]
    members = {f"{lab}/d{s}.jpg": (_jpeg(_field(s)), lab) for s, lab in enumerate(labels)}
    members.update({
        "neutrophil/c_sharp.jpg": (_jpeg(three), "neutrophil"),
        "eosinophil/c_mid.jpg": (_jpeg(three, 0.7), "eosinophil"),
        "eosinophil/c_blur.jpg": (_jpeg(three, 1.5), "eosinophil"),
        "lymphocyte/t_a.jpg": (_jpeg(tie), "lymphocyte"),
        "monocyte/t_b.jpg": (_jpeg(tie, 1.0), "monocyte"),
        "basophil/p_a.jpg": (pair, "basophil"),
        "basophil/p_b.jpg": (pair, "basophil"),
    })
    return members


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A manifest + store of the planted images, plus a quarantined row and a non-canonical row."""
    root = tmp_path_factory.mktemp("planted")
    rows = []
    with StoreWriter(root / "store") as store:
        for member, (data, label) in sorted(_planted().items()):
            shard, offset, length = store.add(data)
            rows.append({"member": member, "label": label, "sha256": hashlib.sha256(data).hexdigest(),
                         "bytes": len(data), "width": 160, "height": 160, "format": "JPEG", "mode": "RGB",
                         "status": "ok", "reason": "", "shard": shard, "offset": offset, "length": length})
    rows.append({"member": "eosinophil/broken.jpg", "label": "eosinophil", "status": "quarantined",
                 "reason": "truncated", "bytes": 10})
    rows.append({"member": "other/x.jpg", "label": "excluded", "status": "ok", "bytes": 10})
    blank = {"sha256": "", "width": "", "height": "", "format": "", "mode": "", "reason": "",
             "shard": -1, "offset": -1, "length": -1}
    rows = [{**blank, **r, "id": f"lab/{r['member']}", "source": "lab", "role": "pool",
             "class_folder": r["member"].split("/")[0]} for r in rows]
    ingest.write_manifest(pd.DataFrame(rows, columns=ingest.MANIFEST_COLUMNS), root / "manifest.csv")
    return root, ingest.read_manifest(root / "manifest.csv")


def _by_member(groups: pd.DataFrame) -> dict[str, tuple[bool, str, str]]:
    return {m: (bool(k), w, r) for m, k, w, r in zip(groups["member"], groups["kept"], groups["winner"], groups["reason"])}


def _check_counts(out, manifest) -> dict:
    t = out.summary["totals"]
    assert t["in"] == int(manifest["label"].isin(dedup_run.LABELS).sum()) == 14
    assert t["in"] == t["kept"] + t["duplicates_removed"] + t["conflicts_dropped"] + t["quarantined"]
    assert t["kept"] == len(out.kept) and t["quarantined"] == 1
    kept_labels = manifest.set_index("id").loc[out.kept["id"], "label"]
    assert out.kept["label"].tolist() == kept_labels.tolist()  # no relabelling: kept rows are untouched
    return t


@pytest.mark.parametrize("mode", ["verified", "paper"])
def test_on_conflict_majority_keeps_the_sharpest_majority_image(planted, mode):
    root, manifest = planted
    out = dedup_run.run(manifest, root / "store", {"mode": mode, "on_conflict": "majority", "workers": 1})
    eo, tie = "eosinophil", ""
    assert _by_member(out.groups) == {
        "neutrophil/c_sharp.jpg": (False, eo, conflicts.MINORITY_LABEL),   # the sharpest, but the minority label
        "eosinophil/c_mid.jpg": (True, eo, ""),                        # the sharpest eosinophil
        "eosinophil/c_blur.jpg": (False, eo, conflicts.DUPLICATE),
        "lymphocyte/t_a.jpg": (False, tie, conflicts.LABEL_TIE),           # 1-1: undecidable, both dropped
        "monocyte/t_b.jpg": (False, tie, conflicts.LABEL_TIE),
        "basophil/p_a.jpg": (True, "", ""),
        "basophil/p_b.jpg": (False, "", conflicts.DUPLICATE),
    }
    t = _check_counts(out, manifest)
    assert (t["kept"], t["duplicates_removed"], t["conflicts_dropped"]) == (8, 2, 3)
    lc = out.summary["label_conflicts"]
    assert {k: lc[k] for k in ("groups", "majority", "tie", "dropped", "images_kept", "images_dropped")} == {
        "groups": 2, "majority": 1, "tie": 1, "dropped": 0, "images_kept": 1, "images_dropped": 4}
    assert {e["outcome"]: e["winner"] for e in lc["examples"]} == {"majority": eo, "tie": ""}
    assert out.summary["sources"]["lab"]["neutrophil"]["conflicts_dropped"] == 1
    assert out.summary["sources"]["lab"]["eosinophil"] == {"in": 5, "kept": 3, "duplicates_removed": 1,
                                                           "conflicts_dropped": 0, "quarantined": 1}


@pytest.mark.parametrize("mode", ["verified", "paper"])
def test_on_conflict_drop_drops_every_member(planted, mode):
    root, manifest = planted
    out = dedup_run.run(manifest, root / "store", {"mode": mode, "on_conflict": "drop", "workers": 1})
    table = _by_member(out.groups)
    for m in ("neutrophil/c_sharp.jpg", "eosinophil/c_mid.jpg", "eosinophil/c_blur.jpg",
              "lymphocyte/t_a.jpg", "monocyte/t_b.jpg"):
        assert table[m] == (False, "", conflicts.LABEL_CONFLICT)
    assert table["basophil/p_b.jpg"] == (False, "", conflicts.DUPLICATE)
    t = _check_counts(out, manifest)
    assert (t["kept"], t["duplicates_removed"], t["conflicts_dropped"]) == (7, 1, 5)
    lc = out.summary["label_conflicts"]
    assert (lc["groups"], lc["majority"], lc["tie"], lc["dropped"], lc["images_dropped"]) == (2, 0, 0, 2, 5)


def test_unknown_on_conflict_rule_is_refused_before_any_work(planted):
    root, manifest = planted
    with pytest.raises(dedup_run.ConfigError, match="on_conflict 'vote'"):
        dedup_run.run(manifest, root / "nowhere", {"mode": "verified", "on_conflict": "vote"})
