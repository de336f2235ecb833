"""Applying duplicate removal (the wbc.dedup rooms) to an ingest manifest: the kept manifest, the group
table, the per-source x class summary with both modes' pair counts, the cross-source / cross-split
audit and the montage of the largest groups. Used by the `dedup` stage."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wbc import LABELS
from wbc.data import plots, sources
from wbc.core.errors import ConfigError
from wbc.data.ingest import write_manifest
from wbc.data.store import ImageStore
from wbc.dedup.conflicts import CONFLICT_RULES, DUPLICATE, LABEL_TIE, resolve_conflicts
from wbc.dedup.fingerprints import hash_images
from wbc.dedup.groups import MODES, find_groups


@dataclass
class DedupOutcome:
    kept: pd.DataFrame       # manifest rows kept (labels unchanged: a kept image carries its group's label)
    groups: pd.DataFrame     # one row per image in a group of two or more (winner, reason: see _group_table)
    audit: pd.DataFrame      # confirmed pairs across sources or across the sources' own splits
    summary: dict[str, Any]


def _source_split(source_id: str) -> str:
    try:
        return str(sources.get_source(source_id).get("split", ""))
    except ConfigError:  # a user's own manifest: sources outside the registry
        return ""


def run(manifest: pd.DataFrame, store_root: str | Path, params: dict[str, Any]) -> DedupOutcome:
    """Deduplicate the canonical-label rows of `manifest` (stored images) with the params' mode;
    the other mode is computed on the same features for the side-by-side counts."""
    mode = params.get("mode", "verified")
    if mode not in MODES:
        raise ConfigError(f"dedup.mode {mode!r} is unknown; valid: {', '.join(MODES)}")
    on_conflict = params.get("on_conflict", "drop")
    if on_conflict not in CONFLICT_RULES:
        raise ConfigError(f"dedup.on_conflict {on_conflict!r} is unknown; valid: {', '.join(CONFLICT_RULES)}")
    rows = manifest[manifest["label"].isin(LABELS)].sort_values("id", kind="stable").reset_index(drop=True)
    stored = rows[(rows["status"] == "ok") & (rows["shard"] >= 0)]
    store = ImageStore(store_root)
    where = {r.id: (int(r.shard), int(r.offset), int(r.length)) for r in stored.itertuples(index=False)}
    feats = hash_images(lambda key: store.read(*where[key]), list(where), int(params.get("workers", 0) or 0))

    extra = {k: v for k, v in params.items() if k not in ("mode", "on_conflict", "workers")}
    results = {m: find_groups(feats, m, **extra) for m in MODES}
    res = results[mode]
    by_id = rows.set_index("id")
    labels = by_id.loc[feats.keys, "label"].to_numpy()
    resolution = resolve_conflicts(res, labels, feats.sharpness, feats.keys, on_conflict)
    keep = resolution.keep

    # in = kept + duplicate + conflict + quarantined; images dedup cannot decode stay "quarantined"
    # (their reasons are listed in the summary)
    status = pd.Series("quarantined", index=rows["id"])
    idx = pd.Index(feats.keys)
    status.loc[idx[keep]] = "kept"
    status.loc[idx[~keep & (resolution.reason == DUPLICATE)]] = "duplicate"
    status.loc[idx[~keep & (resolution.reason != DUPLICATE)]] = "conflict"

    kept = rows[rows["id"].isin(idx[keep])].copy()
    groups = _group_table(feats, res, resolution, by_id)
    audit = _audit(feats, res, by_id)
    summary = _summary(rows, status, results, mode, on_conflict, groups, audit)
    summary["unreadable"] = dict(sorted(feats.errors.items()))
    return DedupOutcome(kept.reset_index(drop=True), groups, audit, summary)


def _group_table(feats, res, resolution, by_id) -> pd.DataFrame:
    """One row per image in a group of two or more: `kept`, `conflict` (the group's members carry
    different labels), `winner` (the majority label that won a conflict group, "" otherwise) and
    `reason` (why the image was dropped: DUPLICATE, LABEL_CONFLICT, MINORITY_LABEL, LABEL_TIE)."""
    sizes = res.group_sizes()
    members = np.flatnonzero(sizes > 1)
    best = res.best_pair_stats()
    # renumber groups 1..G in order of first member id, so ids are stable and readable
    order = {g: n + 1 for n, g in enumerate(dict.fromkeys(res.group[members]))}
    table = pd.DataFrame({
        "group": [order[res.group[i]] for i in members],
        "id": [feats.keys[i] for i in members],
        "source": [by_id.at[feats.keys[i], "source"] for i in members],
        "member": [by_id.at[feats.keys[i], "member"] for i in members],
        "label": [by_id.at[feats.keys[i], "label"] for i in members],
        "size": sizes[members],
        "kept": resolution.keep[members],
        "conflict": resolution.conflict[members],
        "winner": resolution.winner[members],
        "reason": resolution.reason[members],
        "sharpness": np.round(feats.sharpness[members], 4),
        "ahash_dist": pd.array([best["ahash_dist"].get(i, pd.NA) for i in members], dtype="Int64"),
        "phash_dist": pd.array([best["phash_dist"].get(i, pd.NA) for i in members], dtype="Int64"),
        "score": [best["score"].get(i, np.nan) for i in members],
    })
    return table.sort_values(["group", "id"], kind="stable").reset_index(drop=True)


def _audit(feats, res, by_id) -> pd.DataFrame:
    """Confirmed pairs joining two sources, or two different own-splits of the sources."""
    c = res.pairs[res.pairs["confirmed"]]
    a = [feats.keys[i] for i in c["i"]]
    b = [feats.keys[j] for j in c["j"]]
    df = pd.DataFrame({"id_a": a, "id_b": b, "ahash_dist": c["ahash_dist"].to_numpy(),
                       "phash_dist": c["phash_dist"].to_numpy(), "score": c["score"].to_numpy(),
                       "exact": c["exact"].to_numpy()})
    df["source_a"] = [by_id.at[x, "source"] for x in df["id_a"]]
    df["source_b"] = [by_id.at[x, "source"] for x in df["id_b"]]
    df["split_a"] = df["source_a"].map(_source_split)
    df["split_b"] = df["source_b"].map(_source_split)
    df = df[(df["source_a"] != df["source_b"]) | (df["split_a"] != df["split_b"])]
    cols = ["source_a", "split_a", "id_a", "source_b", "split_b", "id_b", "ahash_dist", "phash_dist", "score", "exact"]
    return df[cols].sort_values(["id_a", "id_b"], kind="stable").reset_index(drop=True)


def _summary(rows, status, results, mode, on_conflict, groups, audit) -> dict[str, Any]:
    per: dict[str, Any] = {}
    frame = rows[["id", "source", "label"]].assign(state=status.reindex(rows["id"]).to_numpy())
    for (src, label), g in frame.groupby(["source", "label"], sort=True):
        counts = g["state"].value_counts()
        entry = {"in": int(len(g)), "duplicates_removed": int(counts.get("duplicate", 0)),
                 "conflicts_dropped": int(counts.get("conflict", 0)),
                 "quarantined": int(counts.get("quarantined", 0)), "kept": int(counts.get("kept", 0))}
        assert entry["in"] == sum(v for k, v in entry.items() if k != "in"), "dedup counts do not reconcile"
        per.setdefault(src, {})[label] = entry
    totals = {k: sum(e[k] for s in per.values() for e in s.values())
              for k in ("in", "duplicates_removed", "conflicts_dropped", "quarantined", "kept")}
    pairs = {m: {"candidate_pairs": r.n_candidates, "confirmed_pairs": r.n_confirmed,
                 "exact_pairs": int(r.pairs["exact"].sum()),
                 "groups": int((np.bincount(r.group) > 1).sum()) if len(r.group) else 0,
                 "images_removed": int((~r.keep).sum())}
             for m, r in results.items()}
    audit_counts = (audit.groupby(["source_a", "split_a", "source_b", "split_b"]).size()
                    .rename("pairs").reset_index().to_dict("records")) if len(audit) else []
    return {
        "mode": mode, "on_conflict": on_conflict, "totals": totals, "sources": per, "pairs": pairs,
        "label_conflicts": _conflict_summary(groups),
        "audit": {"pairs": int(len(audit)), "by_pair": audit_counts,
                  "examples": audit.head(10)[["id_a", "id_b", "score"]].to_dict("records")},
    }


def _conflict_summary(groups: pd.DataFrame) -> dict[str, Any]:
    """Label-conflict groups by outcome (majority kept one image, tie dropped all, the drop rule dropped
    all; groups = the three summed), images kept/dropped in them, and up to 10 example groups."""
    conflicts = groups[groups["conflict"]]
    outcome = {g: ("majority" if m["kept"].any() else "tie" if (m["reason"] == LABEL_TIE).any() else "dropped")
               for g, m in conflicts.groupby("group")}
    examples = [{"outcome": outcome[g], "winner": str(m["winner"].iloc[0]),
                 "members": [f"{i} ({lab})" for i, lab in zip(m["id"], m["label"])]}
                for g, m in conflicts.groupby("group")]
    return {"groups": len(outcome), "majority": sum(o == "majority" for o in outcome.values()),
            "tie": sum(o == "tie" for o in outcome.values()), "dropped": sum(o == "dropped" for o in outcome.values()),
            "images_kept": int(conflicts["kept"].sum()), "images_dropped": int((~conflicts["kept"]).sum()),
            "examples": examples[:10]}


def montage(groups: pd.DataFrame, store_root: str | Path, manifest: pd.DataFrame, path: str | Path,
            max_groups: int = 8, max_members: int = 6) -> Path:
    """The largest groups, one row each, the kept image framed in green (as the paper's Fig. 6)."""
    store = ImageStore(store_root)
    by_id = manifest.set_index("id")
    sizes = groups.groupby("group")["size"].first().sort_values(ascending=False, kind="stable")
    rows, captions, marks = [], [], []
    for g in sizes.index[:max_groups]:
        members = groups[groups["group"] == g].head(max_members)
        label = "/".join(sorted(set(members["label"])))
        rows.append((f"group {g}: {label}", [store.load_rgb(by_id.loc[i]) for i in members["id"]]))
        captions.append([f"{s} {sh:.1f}" for s, sh in zip(members["source"], members["sharpness"])])
        marks.append(members["kept"].tolist())
    if not rows:
        rows = [("no duplicate groups", [])]
        captions, marks = [[]], [[]]
    return plots.image_grid(rows, path, cell=150, title="Largest duplicate groups (green: kept; caption: source, sharpness)",
                            captions=captions, marks=marks)


def save(outcome: DedupOutcome, kept_path: str | Path, report_dir: str | Path) -> None:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(outcome.kept, kept_path)
    outcome.groups.to_csv(report_dir / "groups.csv", index=False)
    outcome.audit.to_csv(report_dir / "audit.csv", index=False)
    (report_dir / "summary.json").write_text(json.dumps(outcome.summary, indent=2, sort_keys=True) + "\n")
