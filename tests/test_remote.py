"""A shared DVC remote: push from one clone, pull into a fresh one, nothing recomputed.

A tiny DVC + git project (two stages writing a few files, NOT this repo's pipeline) is pushed to a
local-folder remote and to a real WebDAV server (wsgidav on 127.0.0.1, started here), cloned fresh
from a bare git "origin", pulled, and `dvc status` / `dvc repro` must find it up to date: the stage
commands count their runs in a file outside the repos, which must not move. Experiments travel too:
`dvc exp push origin <exp>` / `dvc exp pull origin <exp>`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("dvc_webdav")
wsgidav_app = pytest.importorskip("wsgidav.wsgidav_app")
cheroot_wsgi = pytest.importorskip("cheroot.wsgi")

GEN = """import os, pathlib, yaml
n = yaml.safe_load(open("params.yaml"))["n"]
with open(os.environ["TOY_COUNTER"], "a") as f: f.write("gen\\n")
out = pathlib.Path("data/raw"); out.mkdir(parents=True, exist_ok=True)
for i in range(n): (out / f"f{i}.txt").write_text(str(i * i))
"""
TOTAL = """import os, pathlib
with open(os.environ["TOY_COUNTER"], "a") as f: f.write("total\\n")
vals = [int(p.read_text()) for p in sorted(pathlib.Path("data/raw").glob("*.txt"))]
pathlib.Path("out").mkdir(exist_ok=True); pathlib.Path("out/total.txt").write_text(str(sum(vals)))
"""
DVC_YAML = """stages:
  gen:
    cmd: python gen.py
    deps: [gen.py]
    params: [n]
    outs: [data/raw]
  total:
    cmd: python total.py
    deps: [total.py, data/raw]
    outs: [out/total.txt]
"""


def sh(cwd: Path, *cmd: str, env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture()
def webdav(tmp_path: Path):
    """A WebDAV server (wsgidav + cheroot, anonymous) on 127.0.0.1 serving tmp_path/dav; yields its URL."""
    root = tmp_path / "dav"
    (root / "store").mkdir(parents=True)   # the remote's folder must exist on the server
    config = {"provider_mapping": {"/": str(root)}, "simple_dc": {"user_mapping": {"*": True}},
              "http_authenticator": {"domain_controller": None}, "verbose": 0, "logging": {"enable": False}}
    server = cheroot_wsgi.Server(("127.0.0.1", 0), wsgidav_app.WsgiDAVApp(config))
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield f"webdav://127.0.0.1:{server.bind_addr[1]}/store", root
    server.stop()
    thread.join(timeout=10)


def counts(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


@pytest.mark.slow
def test_push_clone_pull_is_up_to_date_over_webdav_and_a_folder(tmp_path: Path, webdav) -> None:
    url, dav_root = webdav
    counter = tmp_path / "runs.txt"
    env = {**os.environ, "TOY_COUNTER": str(counter), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    origin, a = tmp_path / "origin.git", tmp_path / "a"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(origin), env=env)
    sh(tmp_path, "git", "clone", "-q", str(origin), str(a), env=env)
    (a / "gen.py").write_text(GEN)
    (a / "total.py").write_text(TOTAL)
    (a / "params.yaml").write_text("n: 3\n")
    (a / "dvc.yaml").write_text(DVC_YAML)
    sh(a, "dvc", "init", "-q", env=env)
    sh(a, "dvc", "remote", "add", "-d", "team", url, env=env)                 # the shared remote
    sh(a, "dvc", "remote", "add", "folder", str(tmp_path / "folder-remote"), env=env)
    sh(a, "dvc", "repro", env=env)
    assert counts(counter) == ["gen", "total"]
    sh(a, "git", "add", "-A", env=env)
    sh(a, "git", "commit", "-q", "-m", "toy pipeline", env=env)
    sh(a, "git", "push", "-q", "origin", "HEAD:main", env=env)
    sh(a, "dvc", "push", env=env)
    sh(a, "dvc", "push", "-r", "folder", env=env)
    assert any(p.is_file() for p in dav_root.rglob("*"))                    # objects on the server

    for name, extra in (("b", []), ("c", ["-r", "folder"])):                  # fresh clones, pull, no rerun
        clone = tmp_path / name
        sh(tmp_path, "git", "clone", "-q", str(origin), str(clone), env=env)
        sh(clone, "dvc", "pull", *extra, env=env)
        assert (clone / "out/total.txt").read_text() == "5"
        assert "up to date" in sh(clone, "dvc", "status", env=env)
        sh(clone, "dvc", "repro", env=env)
        assert counts(counter) == ["gen", "total"], f"clone {name} recomputed a stage"

    # experiments: run one in a, push it (git refs to origin, data to the team remote), pull it in b
    sh(a, "dvc", "exp", "run", "-q", "-n", "n5", "-S", "n=5", env=env)
    sh(a, "dvc", "exp", "push", "origin", "n5", env=env)
    b = tmp_path / "b"
    sh(b, "dvc", "exp", "pull", "origin", "n5", env=env)
    assert "n5" in sh(b, "dvc", "exp", "show", "--csv", env=env)
    sh(b, "dvc", "exp", "apply", "n5", env=env)
    before = len(counts(counter))
    sh(b, "dvc", "checkout", env=env)
    assert (b / "out/total.txt").read_text() == str(sum(i * i for i in range(5)))
    assert "up to date" in sh(b, "dvc", "status", env=env)
    assert len(counts(counter)) == before
    print(f"round trip ok: {sys.platform}, WebDAV {url} and a folder remote, experiment n5")
