"""An edit to any library module makes `dvc status` name exactly the stages that import it.

In a copy of the repository (committed dvc.lock, no data), the docstring of every module of
src/wbc is edited; `dvc status --json` must then report, for each stage instance, exactly the
modules of its import closure (tests/test_dvc_deps.py) as modified dependencies: nothing an edit
could make stale is missed, and no stage is rerun for a module it does not read.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_dvc_deps import ROOT, closure, script_of, stages
from test_readme import copy_checkout


def _edit_docstring(path: Path) -> None:
    """Prefix the module docstring with "(edited) " (a comment line for a module without one)."""
    text = path.read_text(encoding="utf-8")
    quote = text.find('"""')
    edited = text[:quote + 3] + "(edited) " + text[quote + 3:] if quote >= 0 else "# (edited)\n" + text
    path.write_text(edited, encoding="utf-8")


def _modified_src_deps(entries: list) -> set[str]:
    """The src/ paths a `dvc status --json` stage entry reports as modified dependencies."""
    found = set()
    for entry in entries:
        if isinstance(entry, dict):
            for path, state in entry.get("changed deps", {}).items():
                if path.startswith("src/") and path.endswith(".py") and state == "modified":
                    found.add(path)
    return found


@pytest.mark.slow
def test_docstring_edits_name_exactly_the_importing_stages(tmp_path: Path) -> None:
    work = tmp_path / "clone"
    copy_checkout(work)
    modules = sorted((work / "src" / "wbc").rglob("*.py"))
    for module in modules:
        _edit_docstring(module)
    proc = subprocess.run(["dvc", "status", "--json"], cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    families = stages()
    seen = set()
    for instance, entries in status.items():
        family = instance.split("@")[0]
        if family not in families:
            continue
        seen.add(family)
        expected = {p for p in closure(script_of(families[family])) if p.endswith(".py")}
        assert _modified_src_deps(entries) == expected, f"{instance}: dvc status and the import closure differ"
    assert seen == set(families), f"stages without a status entry: {sorted(set(families) - seen)}"
