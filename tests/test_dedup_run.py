"""The dedup stage's bookkeeping on the synthetic data: planted copies removed, label conflicts
dropped, counts reconcile, reports written."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from wbc import dedup_run, ingest, sources, synthetic


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
