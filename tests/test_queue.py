"""The experiment queue: a params grid queued with `dvc exp run --queue -S ...`, run by two workers
(`dvc queue start -j 2`), gathered with `dvc exp show --json`, in a tiny temporary DVC + git project.

Pitfalls the setup respects: a queued experiment runs in a temporary copy of the git commit, so every
file the stage needs is committed (untracked files are not copied); data outside the repo would need
an absolute path.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

STEP = """import json, yaml
x = yaml.safe_load(open("params.yaml"))["x"]
json.dump({"y": x * 10}, open("metrics.json", "w"))
"""
DVC_YAML = """stages:
  step:
    cmd: python step.py
    deps: [step.py]
    params: [x]
    metrics:
      - metrics.json:
          cache: false
"""


def sh(cwd: Path, *cmd: str, env: dict[str, str], check: bool = True) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def walk(node: Any) -> Iterator[dict]:
    """Every dict in a JSON tree."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def results(show: Any) -> dict[str, dict]:
    """Experiment name -> its metrics.json data, from `dvc exp show --json`."""
    out = {}
    for node in walk(show):
        name, data = node.get("name"), node.get("data")
        if name and isinstance(data, dict) and "metrics" in data:
            m = data["metrics"].get("metrics.json", {}).get("data")
            if m:
                out[name] = m
    return out


@pytest.mark.slow
def test_queue_two_experiments_with_two_workers(tmp_path: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    repo = tmp_path / "toy"
    repo.mkdir()
    (repo / "step.py").write_text(STEP)
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    sh(repo, "git", "init", "-q", "-b", "main", env=env)
    sh(repo, "dvc", "init", "-q", env=env)
    sh(repo, "dvc", "repro", env=env)
    sh(repo, "git", "add", "-A", env=env)     # queued runs see only what git tracks: commit everything
    sh(repo, "git", "commit", "-q", "-m", "toy", env=env)
    for x in (2, 3):
        sh(repo, "dvc", "exp", "run", "--queue", "-n", f"x{x}", "-S", f"x={x}", env=env)
    try:
        sh(repo, "dvc", "queue", "start", "-j", "2", env=env)
        deadline, done = time.monotonic() + 240, {}
        while time.monotonic() < deadline:
            done = results(json.loads(sh(repo, "dvc", "exp", "show", "--json", env=env) or "[]"))
            status = sh(repo, "dvc", "queue", "status", env=env)
            if {"x2", "x3"} <= set(done) or "Failed" in status:
                break
            time.sleep(2)
        print(status)
    finally:
        sh(repo, "dvc", "queue", "stop", env=env, check=False)   # the workers this test started
    assert done.get("x2") == {"y": 20} and done.get("x3") == {"y": 30}, (done, status)
