"""Does a fresh run reproduce the committed results? Bits where they can match, tolerances elsewhere.

Two checks (`wbc verify`):
- **bits**: the fresh `dvc.lock` equals the committed one: every output of every stage has the same
  hash. This holds on any x86-64 CPU with AVX2 running the pinned requirements, with the
  kernels pinned (`train.cpu_kernels: avx2`, wbc.learn.kernels) and CUDA unused.
- **tolerance**: where bits cannot match (a GPU, another architecture, other torch/MKL versions,
  `cpu_kernels: native`) each (test set, model, metric) of the fresh `results_seeds.csv` is
  compared with the committed one: the difference of the means over seeds must lie within
  the 95 % interval of a difference of two means (Welch): t(0.975, df) * sqrt(s_ref^2 / n_ref +
  s_new^2 / n_new), df by Welch-Satterthwaite, s the standard deviations over seeds, and at least
  `floor` (default 1 percentage point: a few images of the embedded test split). A run is
  expected to land within it as long as it is the same method; a systematic change of a few
  points with a tight seed spread is caught. With one seed there is no spread: only the floor.

`mode="auto"` uses bits when this machine can reproduce them (x86-64 with AVX2, no CUDA), else
tolerance. Either way the table of metrics is reported.
"""
from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from wbc.learn import kernels
from wbc.core.errors import WbcError

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
MODES = ("auto", "bits", "tolerance")
DEFAULT_FLOOR = 0.01
CONFIDENCE = 0.95


@dataclass
class Verdict:
    """The outcome: `ok`, the mode used, the comparison table, and the reasons of a failure."""

    ok: bool
    mode: str
    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    lock_changes: list[str] = field(default_factory=list)


def git_show(ref: str, path: str | Path, cwd: str | Path = ".") -> str:
    """A file's text at a git revision (WbcError when git or the file is missing)."""
    try:
        proc = subprocess.run(["git", "show", f"{ref}:{Path(path).as_posix()}"], cwd=cwd, capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        raise WbcError("git is not installed: give the committed files with --reference-results/--reference-lock") from None
    if proc.returncode != 0:
        raise WbcError(f"cannot read {path} at {ref}: {proc.stderr.strip()}")
    return proc.stdout


def tolerance(ref: np.ndarray, new: np.ndarray, floor: float = DEFAULT_FLOOR) -> float:
    """Half-width of the Welch 95 % interval of mean(new) - mean(ref), at least `floor`."""
    ref, new = np.asarray(ref, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if len(ref) < 2 or len(new) < 2:
        return floor
    va, vb = ref.var(ddof=1) / len(ref), new.var(ddof=1) / len(new)
    if va + vb == 0:
        return floor
    df = (va + vb) ** 2 / (va ** 2 / (len(ref) - 1) + vb ** 2 / (len(new) - 1))
    return max(floor, float(stats.t.ppf(0.5 + CONFIDENCE / 2, df) * np.sqrt(va + vb)))


def compare_results(reference: pd.DataFrame, fresh: pd.DataFrame, floor: float = DEFAULT_FLOOR) -> tuple[pd.DataFrame, list[str]]:
    """One row per (set, model, metric): reference and fresh means, difference, tolerance, status.

    Status: `identical` (every seed's value equal), `within`, `OUTSIDE`, or `missing` (the model
    or set is in only one of the tables). Returns the table and the problems (empty: all pass)."""
    for name, df in (("reference", reference), ("fresh", fresh)):
        lacking = [c for c in ("set", "model", "seed", "n", *METRICS) if c not in df.columns]
        if lacking:
            raise WbcError(f"the {name} results lack the columns {', '.join(lacking)} (a results_seeds.csv of wbc report)")
    rows, problems = [], []
    keys = list(dict.fromkeys([*zip(reference["set"], reference["model"]), *zip(fresh["set"], fresh["model"])]))
    for set_name, model in keys:
        a = reference[(reference["set"] == set_name) & (reference["model"] == model)].sort_values("seed")
        b = fresh[(fresh["set"] == set_name) & (fresh["model"] == model)].sort_values("seed")
        if a.empty or b.empty:
            problems.append(f"{set_name} / {model}: only in the {'fresh' if a.empty else 'reference'} results")
            rows.append({"set": set_name, "model": model, "metric": "-", "status": "missing"})
            continue
        if sorted(a["n"].unique()) != sorted(b["n"].unique()):
            problems.append(f"{set_name} / {model}: another test set (n {a['n'].iloc[0]} vs {b['n'].iloc[0]})")
        same_seeds = a["seed"].tolist() == b["seed"].tolist()
        for metric in METRICS:
            ra, rb = a[metric].to_numpy(np.float64), b[metric].to_numpy(np.float64)
            tol = tolerance(ra, rb, floor)
            diff = float(rb.mean() - ra.mean())
            if same_seeds and np.array_equal(ra, rb):
                status = "identical"
            elif abs(diff) <= tol + 1e-12:
                status = "within"
            else:
                status = "OUTSIDE"
                problems.append(f"{set_name} / {model} {metric}: {rb.mean():.4f} vs committed {ra.mean():.4f} "
                                f"(difference {diff:+.4f}, tolerance ±{tol:.4f})")
            rows.append({"set": set_name, "model": model, "metric": metric, "seeds": f"{len(ra)}/{len(rb)}",
                         "reference": round(float(ra.mean()), 4), "fresh": round(float(rb.mean()), 4),
                         "difference": round(diff, 4), "tolerance": round(tol, 4), "status": status})
    return pd.DataFrame(rows), problems


def _outs(lock_text: str) -> dict[str, str]:
    """{stage:out path: md5} of a dvc.lock text."""
    doc = yaml.safe_load(lock_text) or {}
    found = {}
    for stage, body in (doc.get("stages") or {}).items():
        for out in body.get("outs") or []:
            found[f"{stage}: {out.get('path')}"] = str(out.get("md5") or out.get("hash") or out.get("etag"))
    return found


def lock_differences(reference_lock: str, fresh_lock: str) -> list[str]:
    """The stage outputs whose hash differs between two dvc.lock texts (or exist in only one)."""
    a, b = _outs(reference_lock), _outs(fresh_lock)
    return [f"{key}: {a.get(key, 'absent')} -> {b.get(key, 'absent')}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def bits_possible() -> tuple[bool, str]:
    """Whether this machine can reproduce the committed bytes, and why (not)."""
    if not kernels.is_x86():
        return False, "not an x86-64 CPU"
    if not kernels.cpu_has_avx2():
        return False, "the CPU has no AVX2"
    try:
        import torch  # lazy: `wbc --help` must not load torch

        if torch.cuda.is_available():
            return False, "CUDA is available (training runs on the GPU)"
    except ImportError:
        pass
    return True, "x86-64 CPU with AVX2, no CUDA"


def verify(fresh_results: str | Path, fresh_lock: str | Path, *, reference_results: str | None = None,
           reference_lock: str | None = None, ref: str = "HEAD", mode: str = "auto",
           floor: float = DEFAULT_FLOOR, cwd: str | Path = ".") -> Verdict:
    """Compare a fresh run (its results_seeds.csv and dvc.lock) with the committed one (texts, or
    read at git `ref`)."""
    if mode not in MODES:
        raise WbcError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        mode = "bits" if bits_possible()[0] else "tolerance"
    fresh_results = Path(fresh_results)
    if not fresh_results.is_file():
        raise WbcError(f"{fresh_results} not found: run `dvc repro` first")
    ref_text = reference_results if reference_results is not None else git_show(ref, fresh_results, cwd)
    table, problems = compare_results(pd.read_csv(io.StringIO(ref_text)), pd.read_csv(fresh_results), floor)
    lock_changes: list[str] = []
    if mode == "bits":
        fresh_lock = Path(fresh_lock)
        if not fresh_lock.is_file():
            raise WbcError(f"{fresh_lock} not found: run `dvc repro` first")
        ref_lock = reference_lock if reference_lock is not None else git_show(ref, fresh_lock, cwd)
        lock_changes = lock_differences(ref_lock, fresh_lock.read_text(encoding="utf-8"))
        # results_seeds.csv is a stage output: an identical lock means identical results
        problems = [f"dvc.lock differs from the committed one in {len(lock_changes)} output(s)"] if lock_changes else []
    return Verdict(ok=not problems, mode=mode, table=table, problems=problems, lock_changes=lock_changes)


def report(verdict: Verdict) -> str:
    """The verdict as markdown: the guarantee checked, the table, what failed."""
    why = {"bits": "bit-for-bit: dvc.lock must equal the committed one (x86-64 CPU, pinned kernels)",
           "tolerance": "within tolerance: each metric's mean over seeds within the Welch 95 % interval "
                        f"of the seed spread (at least {DEFAULT_FLOOR:.0%} or --floor)"}[verdict.mode]
    lines = [f"# wbc verify: {'PASS' if verdict.ok else 'FAIL'}", "", f"Check: {why}.", ""]
    if verdict.mode == "bits" and not verdict.lock_changes:
        lines += ["dvc.lock: every stage output has the committed hash (bit-identical).", ""]
    cols = [c for c in ("set", "model", "metric", "seeds", "reference", "fresh", "difference", "tolerance", "status")
            if c in verdict.table.columns]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, row in verdict.table.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(row.get(c)) else str(row.get(c)) for c in cols) + " |")
    if verdict.lock_changes:
        lines += ["", "Outputs whose hash differs from the committed dvc.lock:", ""]
        lines += [f"- {c}" for c in verdict.lock_changes]
    if verdict.problems:
        lines += ["", "Failed:", ""] + [f"- {p}" for p in verdict.problems]
    return "\n".join(lines) + "\n"
