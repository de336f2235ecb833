"""Duplicate groups within one set, by the two modes' rules: candidate pairs -> scored and confirmed
pairs -> connected components (breadth-first search) -> the sharpest image kept per group."""
from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from wbc.core.errors import ConfigError
from wbc.core.parallel import n_workers
from wbc.dedup import index, verify
from wbc.dedup.candidates import exact_pairs, hamming_pairs, knn_pairs, popcount64
from wbc.dedup.fingerprints import Features, standardise

#: Defaults of the verified mode (all overridable through find_groups(**params)).
VERIFIED_DEFAULTS: dict[str, Any] = {
    "knn": 12,              # candidates: each image's k nearest neighbours in the shift-robust embedding
    "knn_zoom": 8,          # + the k nearest plain embeddings of each image's zoomed-in one (0 = off)
    "verify_threshold": 0.80,  # min(centre NCC, surroundings NCC) after alignment needed to confirm a pair
    "centre": 0.30,         # radius of the central disc (the white cell), as a fraction of the image side
    "max_offset": 0.20,     # the centred cells must coincide: translation <= this fraction of the side
    "screen_threshold": 0.50,  # coarse (half-size) score below which a candidate is ruled out
}
PAPER_DEFAULTS: dict[str, Any] = {"ahash_threshold": 11, "phash_threshold": 14}
#: Candidate search engine (both modes): "exact" (the blocked searches below, bit-for-bit the pipeline's
#: default) or "faiss" (wbc.dedup.index: multi-index hashing for the hash rule, a FAISS index for the k-NN).
SEARCH_DEFAULTS: dict[str, Any] = {"search": "exact"}
MODES = ("verified", "paper")


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph (n nodes, edges i-j) by breadth-first search.

    Returns a component id per node; ids are numbered in order of each component's smallest node.
    """
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in zip(np.asarray(i).tolist(), np.asarray(j).tolist()):
        adj[a].append(b)
        adj[b].append(a)
    comp = np.full(n, -1, np.int64)
    next_id = 0
    for start in range(n):
        if comp[start] >= 0:
            continue
        comp[start] = next_id
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if comp[v] < 0:
                    comp[v] = next_id
                    queue.append(v)
        next_id += 1
    return comp


def choose_kept(comp: np.ndarray, sharp: np.ndarray, keys: Sequence[Any]) -> np.ndarray:
    """One kept image per component: highest sharpness; ties broken by the smallest key (str order)."""
    order = sorted(range(len(comp)), key=lambda x: (comp[x], -float(sharp[x]), str(keys[x])))
    keep = np.zeros(len(comp), bool)
    seen: set[int] = set()
    for x in order:
        if comp[x] not in seen:
            seen.add(int(comp[x]))
            keep[x] = True
    return keep


@dataclass
class GroupResult:
    """Outcome of find_groups on Features rows: `group[i]` (same id = same cell), `keep[i]`, and the pairs."""

    mode: str
    group: np.ndarray
    keep: np.ndarray
    pairs: pd.DataFrame   # i, j, ahash_dist, phash_dist, score, offset, exact, candidate, screened_out, confirmed
    params: dict[str, Any]

    @property
    def n_candidates(self) -> int:
        return int(self.pairs["candidate"].sum())

    @property
    def n_confirmed(self) -> int:
        return int(self.pairs["confirmed"].sum())

    def group_sizes(self) -> np.ndarray:
        """Size of each image's group."""
        return np.bincount(self.group)[self.group] if len(self.group) else np.zeros(0, np.int64)

    def best_pair_stats(self) -> pd.DataFrame:
        """Per image: the hash distances and score of its strongest confirmed link (NaN when none)."""
        c = self.pairs[self.pairs["confirmed"]]
        both = pd.concat([c.rename(columns={"i": "node"}).drop(columns="j"),
                          c.rename(columns={"j": "node"}).drop(columns="i")])
        if both.empty:
            return pd.DataFrame(columns=["ahash_dist", "phash_dist", "score"])
        both = both.sort_values(["node", "score", "phash_dist"], ascending=[True, False, True], kind="stable",
                                na_position="last")
        return both.drop_duplicates("node").set_index("node")[["ahash_dist", "phash_dist", "score"]]


def _params(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    if mode not in MODES:
        raise ConfigError(f"dedup mode {mode!r} is unknown; valid: {', '.join(MODES)}")
    p = {**PAPER_DEFAULTS, **VERIFIED_DEFAULTS, **SEARCH_DEFAULTS}
    p.update({k: v for k, v in params.items() if v is not None and k in p})
    index.check_search(p["search"])
    return p


def candidate_pairs(f: Features, mode: str, p: dict[str, Any], other: Features | None = None) -> pd.DataFrame:
    """Candidate pairs of the mode (within f, or f x other), byte-identical copies flagged `exact`:
    paper mode, the hash rule (AHash < ahash_threshold and PHash < phash_threshold); verified mode,
    the `knn` nearest neighbours in the shift-robust embedding (both directions across two sets), plus the
    `knn_zoom` nearest plain embeddings of each image's zoomed-in embedding (views at other magnifications).
    `p["search"]` picks the engine: "exact" (default) or "faiss" (`wbc.dedup.index`, same pairs for the hash
    rule, approximate k-NN)."""
    indexed = p.get("search", "exact") == "faiss"
    if mode == "paper":
        for x in (f, other):
            if x is not None:
                x.fill_paper(sharp=False)
        b_a, b_p = (None, None) if other is None else (other.ahash, other.phash)
        search = functools.partial(index.hamming_pairs_mih, workers=n_workers(f.workers)) if indexed else hamming_pairs
        i, j = search(f.ahash, int(p["ahash_threshold"]), b_a, a2=f.phash, below2=int(p["phash_threshold"]), b2=b_p)
    else:
        f.require_verify()
        knn = index.knn_pairs_indexed if indexed else knn_pairs
        kz = int(p["knn_zoom"])
        if other is None:  # the plain embeddings' statistics standardise the zoomed ones too
            zoomed = standardise(f.embed_zoomed, f.embed) if kz > 0 else None
            i, j = knn(standardise(f.embed), int(p["knn"]), zoomed=zoomed, kz=kz)
        else:
            other.require_verify()
            ref = (f.embed, other.embed)
            zoomed = (standardise(f.embed_zoomed, ref), standardise(other.embed_zoomed, ref)) if kz > 0 else (None, None)
            i, j = knn(standardise(f.embed, ref), int(p["knn"]), standardise(other.embed, ref), zoomed=zoomed[0],
                       zoomed_b=zoomed[1], kz=kz)
    ei, ej = exact_pairs(f.sha256, None if other is None else other.sha256)
    cand = pd.DataFrame({"i": i, "j": j, "candidate": True})
    exact = pd.DataFrame({"i": ei, "j": ej, "exact": True})
    df = cand.merge(exact, on=["i", "j"], how="outer")
    df["candidate"] = df["candidate"].fillna(False).astype(bool)
    df["exact"] = df["exact"].fillna(False).astype(bool)
    return df.sort_values(["i", "j"], kind="stable").reset_index(drop=True)


def _scores(fa: Features, ii: np.ndarray, jj: np.ndarray, fb: Features | None, centre: float,
            half: bool) -> tuple[np.ndarray, np.ndarray]:
    """verify_pairs on the rows the pairs use (full-size thumbnails, or half-size when `half`)."""
    name = "coarse" if half else "thumbs"
    if fb is None:  # one set: the spectra of every row used, once
        used = np.unique(np.concatenate([ii, jj]))
        th = getattr(fa, name)[used]
        sp = verify.spectra(th)
        args = (sp, th, np.searchsorted(used, ii), np.searchsorted(used, jj), sp, th, centre)
    else:
        ua, ub = np.unique(ii), np.unique(jj)
        ta, tb = getattr(fa, name)[ua], getattr(fb, name)[ub]
        args = (verify.spectra(ta), ta, np.searchsorted(ua, ii), np.searchsorted(ub, jj), verify.spectra(tb), tb, centre)
    return verify.parallel_verify(args, fa.workers)


def confirm(f: Features, df: pd.DataFrame, mode: str, p: dict[str, Any], other: Features | None = None) -> pd.DataFrame:
    """Score and confirm candidate pairs: exact copies always; paper mode every candidate; verified
    mode candidates with verification score >= verify_threshold whose centred cells coincide
    (offset <= max_offset).

    Verified mode screens every candidate on half-size thumbnails first: a pair whose coarse score is
    below `screen_threshold` is ruled out (`screened_out`, its `score` is the coarse one); the others get
    the full-size verification. Paper mode reports the full-size `score`/`offset` when verification
    features exist (NaN otherwise).
    """
    ii, jj = df["i"].to_numpy(np.int64), df["j"].to_numpy(np.int64)
    n = len(df)
    score = np.full(n, np.nan)
    offset = np.full(n, np.nan)
    screened_out = np.zeros(n, bool)
    centre = float(p["centre"])
    if n and mode == "verified":
        s1, o1 = _scores(f, ii, jj, other, centre, half=True)
        screened_out = s1 < float(p["screen_threshold"])
        score, offset = s1.astype(np.float64), o1.astype(np.float64)
        keep = np.flatnonzero(~screened_out)
        if len(keep):
            s2, o2 = _scores(f, ii[keep], jj[keep], other, centre, half=False)
            score[keep], offset[keep] = s2, o2
    elif n and f.has_verify and (other is None or other.has_verify):
        score, offset = (x.astype(np.float64) for x in _scores(f, ii, jj, other, centre, half=False))
    df = df.assign(score=np.round(score, 4), offset=np.round(offset, 4), screened_out=screened_out)
    if mode == "paper":
        df["confirmed"] = df["candidate"] | df["exact"]
    else:
        same = (df["score"] >= float(p["verify_threshold"])) & (df["offset"] <= float(p["max_offset"]))
        df["confirmed"] = df["exact"] | (df["candidate"] & ~df["screened_out"] & same)
    return df


def _hash_distances(df: pd.DataFrame, f: Features, other: Features | None = None) -> pd.DataFrame:
    """AHash/PHash distances of the pairs, after computing the paper features of every image in a
    confirmed pair; <NA> for pairs whose images have none (unconfirmed verified-mode candidates)."""
    fb = f if other is None else other
    c = df[df["confirmed"]]
    f.fill_paper(c["i"].to_numpy() if other is not None else np.concatenate([c["i"], c["j"]]))
    if other is not None:
        other.fill_paper(c["j"].to_numpy())
    ii, jj = df["i"].to_numpy(np.int64), df["j"].to_numpy(np.int64)
    known = f.has_paper[ii] & fb.has_paper[jj]
    dist = lambda a, b: pd.Series(popcount64(a[ii] ^ b[jj]).astype(np.int64), index=df.index).where(known).astype("Int64")  # noqa: E731
    return df.assign(ahash_dist=dist(f.ahash, fb.ahash), phash_dist=dist(f.phash, fb.phash))


PAIR_COLUMNS = ["i", "j", "ahash_dist", "phash_dist", "score", "offset", "exact", "candidate", "screened_out",
                "confirmed"]


def find_groups(features: Features, mode: str = "verified", **params: Any) -> GroupResult:
    """Duplicate groups among the Features rows (see the module docstring). Computes the paper features
    (sharpness: the kept image; hash distances) of the images in groups when they are missing."""
    p = _params(mode, params)
    df = confirm(features, candidate_pairs(features, mode, p), mode, p)
    c = df[df["confirmed"]]
    comp = components(len(features), c["i"].to_numpy(), c["j"].to_numpy())
    features.fill_paper(np.flatnonzero(np.bincount(comp)[comp] > 1))  # sharpness decides within groups
    df = _hash_distances(df, features)
    keep = choose_kept(comp, features.sharpness, features.keys)
    return GroupResult(mode, comp, keep, df[PAIR_COLUMNS], p)
