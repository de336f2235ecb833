"""The README cannot rot: every ```bash block preceded by `<!-- runnable -->` runs, in order, in a
temporary copy of the repository (tracked and untracked-but-not-ignored files), offline."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runnable -->"


def runnable_blocks(text: str) -> list[str]:
    """The bash code blocks that directly follow a runnable marker (blank lines allowed between)."""
    pattern = re.compile(re.escape(MARK) + r"\s*\n```(?:bash|sh)\n(.*?)\n```", re.S)
    return [m.group(1) for m in pattern.finditer(text)]


def test_marker_parser_finds_blocks_and_ignores_unmarked():
    text = f"intro\n```bash\nnot me\n```\n{MARK}\n```bash\necho one\n```\n{MARK}\n\n```bash\necho two\n```\n"
    assert runnable_blocks(text) == ["echo one", "echo two"]


def copy_checkout(dest: Path) -> None:
    """A git repository at `dest` with the checkout's files (tracked and untracked-but-not-ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # a clone-like repository: dvc and dvclive need a git root with a commit
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)


def readme_workspace(request, tmp_path: Path) -> Path:
    """Where the blocks run: the GitHub workflow's copy of the checkout when this session runs the
    workflow test and its steps passed (`dvc repro` from nothing there, then `dvc repro -f`: the
    README's `dvc repro` is then up to date, and the later blocks use its outputs), else a fresh copy."""
    if any(item.name == "test_workflow_passes_without_shared" for item in request.session.items):
        run = request.getfixturevalue("workflow_run")
        if run.skipped is None and run.failure is None:
            return run.work
    work = tmp_path / "clone"
    copy_checkout(work)
    return work


@pytest.mark.slow
def test_readme_runnable_blocks(tmp_path, request):
    blocks = runnable_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks, "README has no runnable blocks"
    work = readme_workspace(request, tmp_path)
    for i, block in enumerate(blocks):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, (
            f"README block {i + 1} failed ({proc.returncode}):\n{block}\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-3000:]}")
