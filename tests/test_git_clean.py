"""The git-clean guard (tests/git_clean.py) fails a test session that writes into the checkout.

Each case is a real pytest session in a throw-away git repository whose conftest loads the guard.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from git_clean import declared_outputs

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

TEST_BODY = """
import os
from pathlib import Path

def test_write():
    for rel in filter(None, os.environ["WRITE"].split(",")):
        path = Path(__file__).resolve().parents[1] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("written by a test\\n")
"""


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "code.py").write_text("x = 1\n")
    (root / "notes.txt").write_text("work in progress\n")
    (root / "dvc.yaml").write_text("vars:\n  - path:\n      models: models\n"
                                   "stages:\n  train:\n    foreach: [1, 2]\n    do:\n      cmd: x\n"
                                   "      outs:\n        - ${path.models}/m-${item}.ckpt\n"
                                   "  report:\n    cmd: y\n    outs:\n      - reports/summary.json:\n          cache: false\n")
    (root / "tests" / "conftest.py").write_text("from git_clean import pytest_sessionfinish, pytest_sessionstart  # noqa\n")
    (root / "tests" / "test_it.py").write_text(TEST_BODY)
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=root, check=True)
    subprocess.run(git + ["add", "src", "dvc.yaml", "tests"], cwd=root, check=True)
    subprocess.run(git + ["commit", "-qm", "init"], cwd=root, check=True)
    return root  # notes.txt stays untracked: a change in progress before the run


def _session(repo: Path, write: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WRITE": write, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(repo),
                           str(repo / "tests")], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_that_writes_a_tracked_source_file_fails(repo: Path) -> None:
    proc = _session(repo, "src/code.py")
    assert proc.returncode == 1, proc.stdout
    assert "not declared DVC outputs" in proc.stdout and "src/code.py" in proc.stdout


def test_a_run_that_leaves_a_new_file_fails(repo: Path) -> None:
    proc = _session(repo, "src/sources.lock.yaml")
    assert proc.returncode == 1 and "src/sources.lock.yaml" in proc.stdout


def test_declared_outputs_and_earlier_work_in_progress_pass(repo: Path) -> None:
    proc = _session(repo, "models/m-2.ckpt,reports/summary.json")
    assert proc.returncode == 0, proc.stdout
    assert "not declared DVC outputs" not in proc.stdout


def test_declared_outputs_of_the_project_resolve_paths_and_matrix_items() -> None:
    patterns = declared_outputs(ROOT)
    assert "models/headline-*.ckpt" in patterns and "data/interim/store" in patterns
    assert "reports/dedup/groups.csv" in patterns and not any("${" in p for p in patterns)
