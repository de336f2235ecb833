"""`wbc verify` (wbc.results.verify): a fresh run against the committed results, bits or tolerances."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wbc.apps import cli
from wbc.results import verify
from wbc.core.errors import WbcError

ROOT = Path(__file__).resolve().parents[1]

LOCK = """schema: '2.0'
stages:
  train@a-1:
    cmd: python x
    outs:
    - path: models/a-1.ckpt
      hash: md5
      md5: {h}
      size: 10
"""


def results(acc: dict[str, list[float]], n: int = 200) -> pd.DataFrame:
    rows = []
    for model, values in acc.items():
        for seed, v in enumerate(values, start=1):
            rows.append({"set": "test", "model": model, "seed": seed, "headline": model == "a", "n": n,
                         "accuracy": v, "macro_f1": v - 0.01, "balanced_accuracy": v - 0.02})
    return pd.DataFrame(rows)


def test_tolerance_is_welch_interval_with_a_floor() -> None:
    ref, new = np.array([0.90, 0.94, 0.92]), np.array([0.91, 0.95, 0.96])
    va, vb = ref.var(ddof=1) / 3, new.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    assert verify.tolerance(ref, new) == pytest.approx(stats.t.ppf(0.975, df) * np.sqrt(va + vb))
    assert verify.tolerance(np.array([0.9, 0.9]), np.array([0.9, 0.9])) == verify.DEFAULT_FLOOR  # no spread
    assert verify.tolerance(np.array([0.9]), np.array([0.8]), floor=0.03) == 0.03  # one seed: the floor


def test_identical_within_and_outside() -> None:
    ref = results({"a": [0.90, 0.94, 0.92], "b": [0.80, 0.81, 0.80]})
    same = ref.copy()
    table, problems = verify.compare_results(ref, same)
    assert problems == [] and set(table["status"]) == {"identical"}

    # another machine: a different draw of the same spread -> within
    within = results({"a": [0.93, 0.91, 0.95], "b": [0.81, 0.80, 0.805]})
    table, problems = verify.compare_results(ref, within)
    assert problems == [] and set(table["status"]) == {"within"}

    # a real regression: b loses 10 points with a tight spread -> outside, named in the problems
    worse = results({"a": [0.93, 0.91, 0.95], "b": [0.70, 0.71, 0.70]})
    table, problems = verify.compare_results(ref, worse)
    outside = table[table["status"] == "OUTSIDE"]
    assert set(outside["model"]) == {"b"} and len(outside) == 3
    assert any("test / b accuracy" in p and "-0.1" in p for p in problems)


def test_missing_model_and_other_test_set_fail() -> None:
    ref = results({"a": [0.9, 0.92], "b": [0.8, 0.82]})
    table, problems = verify.compare_results(ref, results({"a": [0.9, 0.92]}))
    assert "missing" in set(table["status"]) and any("only in the reference" in p for p in problems)
    _, problems = verify.compare_results(ref, results({"a": [0.9, 0.92], "b": [0.8, 0.82]}, n=150))
    assert any("another test set" in p for p in problems)
    with pytest.raises(WbcError, match="lack the columns"):
        verify.compare_results(ref.drop(columns=["macro_f1"]), ref)


def test_lock_differences_name_the_outputs() -> None:
    assert verify.lock_differences(LOCK.format(h="aa"), LOCK.format(h="aa")) == []
    diff = verify.lock_differences(LOCK.format(h="aa"), LOCK.format(h="bb"))
    assert diff == ["train@a-1: models/a-1.ckpt: aa -> bb"]


def _files(tmp_path: Path, ref: pd.DataFrame, new: pd.DataFrame, h_ref: str = "aa", h_new: str = "aa") -> list[str]:
    ref.to_csv(tmp_path / "ref.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    (tmp_path / "ref.lock").write_text(LOCK.format(h=h_ref))
    (tmp_path / "dvc.lock").write_text(LOCK.format(h=h_new))
    return ["verify", "--results", str(tmp_path / "new.csv"), "--lock", str(tmp_path / "dvc.lock"),
            "--reference-results", str(tmp_path / "ref.csv"), "--reference-lock", str(tmp_path / "ref.lock")]


def test_command_bits_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref = results({"a": [0.90, 0.94]})
    args = _files(tmp_path, ref, ref)
    assert cli.main(args + ["--mode", "bits", "--out", str(tmp_path / "v.md")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# wbc verify: PASS") and "bit-identical" in out
    assert (tmp_path / "v.md").read_text() == out
    args = _files(tmp_path, ref, ref, h_new="bb")
    assert cli.main(args + ["--mode", "bits"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "models/a-1.ckpt: aa -> bb" in out


def test_command_tolerance_mode_both_outcomes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref = results({"a": [0.90, 0.94, 0.92]})
    args = _files(tmp_path, ref, results({"a": [0.93, 0.91, 0.95]}), h_new="bb")  # bits differ, metrics agree
    assert cli.main(args + ["--mode", "tolerance"]) == 0
    assert "PASS" in capsys.readouterr().out
    args = _files(tmp_path, ref, results({"a": [0.80, 0.81, 0.80]}))
    assert cli.main(args + ["--mode", "tolerance"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "OUTSIDE" in out and "test / a accuracy" in out


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_committed_results_read_from_git() -> None:
    """Against HEAD in this checkout: the committed table compared with itself is identical."""
    committed = verify.git_show("HEAD", "reports/results_seeds.csv", cwd=ROOT)
    assert committed.startswith("set,model,seed")
    with pytest.raises(WbcError, match="cannot read"):
        verify.git_show("HEAD", "no/such/file.csv", cwd=ROOT)
