"""pytest plugin: a test run never writes into tracked files (or leaves new files) in the checkout.

At the start of the session it records `git status --porcelain` (and the bytes of every file
listed there, so work in progress is allowed); at the end, any path whose status or bytes changed
and that is not a declared DVC output (`outs` of dvc.yaml, with `${path.*}` resolved and the
matrix/foreach items as wildcards) fails the session with the list of paths. Outside a git
checkout, or without git, it does nothing. Loaded by tests/conftest.py (`pytest_plugins`).
"""
from __future__ import annotations

import fnmatch
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

_KEY = pytest.StashKey[dict]()


def _porcelain(root: Path) -> dict[str, str] | None:
    """{path: status + content hash} of every path git lists as changed or untracked; None outside git."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "-z"], cwd=root,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    out: dict[str, str] = {}
    for entry in proc.stdout.split("\0"):
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        file = root / path
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "-"
        out[path] = f"{status} {digest}"
    return out


def declared_outputs(root: Path) -> list[str]:
    """Glob patterns of the outputs dvc.yaml declares (stage outs, metrics and plots files)."""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        return []
    doc = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}
    paths = {}
    for block in doc.get("vars") or []:
        if isinstance(block, dict):
            paths.update({f"path.{k}": str(v) for k, v in (block.get("path") or {}).items()})

    def resolve(text: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: paths.get(m.group(1).strip(), "*"), text)

    patterns = []
    for stage in (doc.get("stages") or {}).values():
        body = stage.get("do", stage)
        for out in body.get("outs") or []:
            name = out if isinstance(out, str) else next(iter(out))
            patterns.append(resolve(name).rstrip("/"))
    return patterns


def undeclared_changes(root: Path, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths whose git status or bytes changed during the run and that no DVC output covers."""
    patterns = declared_outputs(root)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))

    def declared(path: str) -> bool:
        path = path.rstrip("/")
        return any(fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") for pat in patterns)

    return [p for p in changed if not declared(p)]


def _root(config: pytest.Config) -> Path:
    return Path(str(config.rootpath))


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_KEY] = {"before": _porcelain(_root(session.config))}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.stash.get(_KEY, {}).get("before")
    if before is None:
        return
    root = _root(session.config)
    after = _porcelain(root) or {}
    bad = undeclared_changes(root, before, after)
    if bad:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = ("the test run changed files of the checkout that are not declared DVC outputs "
               f"(git status): {', '.join(bad)}")
        if reporter is not None:
            reporter.write_line("ERROR: " + msg, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
