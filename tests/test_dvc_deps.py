"""dvc.yaml lists exactly what each stage reads, derived from the code so it cannot rot.

For every stage (each matrix/foreach family once), the stage script named in `cmd` is parsed and
its imports within `src/wbc` are followed transitively (imports inside functions count: they run
when the stage runs; imports under `if TYPE_CHECKING:` do not). The closure -- every module file,
every package `__init__.py` on the way, and the package data files a module opens by name (e.g.
`sources.yaml`) -- must equal the stage's `src/` deps: a missing module leaves stale results that
`dvc repro` calls up to date, an extra one reruns a stage for nothing.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "wbc"
#: params that only change speed or display, never results: never stage dependencies
NON_RESULT_KEYS = {"workers"}


def module_file(name: str) -> Path | None:
    """The file of module `wbc.x.y` (a module file or a package __init__), None when absent."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imported_modules(path: Path) -> set[str]:
    """The `wbc...` modules a file imports (anywhere but under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "wbc")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "wbc" and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}"))
    return found


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def data_files(path: Path) -> set[Path]:
    """Package data files (src/wbc/**/*.yaml, *.json) a module names in its text."""
    text = path.read_text(encoding="utf-8")
    return {p for p in PKG.rglob("*") if p.suffix in (".yaml", ".json") and re.search(rf"\b{re.escape(p.name)}\b", text)}


def closure(script: Path) -> set[str]:
    """Repository-relative paths of every src/wbc file the script reads through its imports."""
    todo, seen, files = list(imported_modules(script)), set(), set()
    while todo:
        for name in _with_parents(todo.pop()):
            path = module_file(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            files.add(path)
            files.update(data_files(path))
            todo.extend(imported_modules(path))
    return {p.relative_to(ROOT).as_posix() for p in files}


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, each `foreach` family by its `do` body (one entry per family)."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def script_of(stage: dict) -> Path:
    match = re.search(r"python (stages/\S+\.py)", stage["cmd"])
    assert match, f"cmd does not run a stage script: {stage['cmd']}"
    return ROOT / match.group(1)


def test_closure_follows_imports_transitively(tmp_path: Path) -> None:
    # stages/report.py -> wbc.results.report -> wbc.results.metrics: both, and the package __init__
    deps = closure(ROOT / "stages" / "report.py")
    assert {"src/wbc/__init__.py", "src/wbc/results/report.py", "src/wbc/results/metrics.py", "src/wbc/core/params.py"} <= deps
    # a TYPE_CHECKING import is not a dependency; a function-level import is
    script = tmp_path / "s.py"
    script.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import wbc.learn.train\n"
                      "def f():\n    from wbc.core import errors\n")
    # (the package __init__ pins the SIMD dispatch first: wbc.core.dispatch)
    assert closure(script) == {"src/wbc/__init__.py", "src/wbc/core/__init__.py", "src/wbc/core/dispatch.py",
                               "src/wbc/core/errors.py"}


def test_sources_yaml_is_data_of_sources_module() -> None:
    assert "src/wbc/data/sources.yaml" in closure(ROOT / "stages" / "download.py")


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_its_import_closure(name: str) -> None:
    stage = stages()[name]
    script = script_of(stage)
    deps = {d for d in stage.get("deps", []) if isinstance(d, str)}
    assert script.relative_to(ROOT).as_posix() in deps, f"{name}: the stage script is not a dependency"
    listed = {d for d in deps if d.startswith("src/")}
    expected = closure(script)
    assert not expected - listed, f"{name}: dvc.yaml misses {sorted(expected - listed)}"
    assert not listed - expected, f"{name}: dvc.yaml lists modules the stage does not import: {sorted(listed - expected)}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_params_exclude_speed_only_keys(name: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for entry in stages()[name].get("params", []):
        key = entry if isinstance(entry, str) else next(iter(entry))
        leaf = key.split(".")[-1]
        assert leaf not in NON_RESULT_KEYS, f"{name}: {key} cannot change results, it must not be a dependency"
        section = params.get(key)
        if isinstance(section, dict):
            bad = NON_RESULT_KEYS & set(section)
            assert not bad, f"{name}: depends on the whole `{key}` section, which holds {sorted(bad)}: list its keys"
