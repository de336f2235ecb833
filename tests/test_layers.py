"""The library's rooms and floors (docs/design.md "Layout"): no import circles, no import upward.

Every module under src/wbc belongs to one room (its subpackage); a room may import only the rooms
below it:

    apps     -> everything below
    results  -> learn, dataset, cells, dedup, data, core
    learn    -> cells, data, core
    dataset  -> cells, dedup, data, core
    cells    -> data, core
    dedup    -> data, core
    data     -> core
    core     -> (nothing; the package root `wbc` holds only the version and LABELS, and imports
                only wbc.core.dispatch: its pin must run before anything loads NumPy)

Imports are read from the code (tests/test_dvc_deps.imported_modules: module top and function
bodies, not `if TYPE_CHECKING:`), so a lazy import counts like any other.
"""
from __future__ import annotations

from pathlib import Path

from test_dvc_deps import PKG, imported_modules, module_file

ALLOWED = {
    "core": set(),
    "data": {"core"},
    "dedup": {"data", "core"},
    "cells": {"data", "core"},
    "learn": {"cells", "data", "core"},
    "dataset": {"cells", "dedup", "data", "core"},
    "results": {"learn", "dataset", "cells", "dedup", "data", "core"},
    "apps": {"results", "learn", "dataset", "cells", "dedup", "data", "core"},
}


#: What the package root `wbc` may import: the SIMD dispatch pin (and its package), nothing else.
ROOT_IMPORTS = {"wbc.core", "wbc.core.dispatch"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(name: str) -> str | None:
    """The room of module `wbc.x...` (None for the package root `wbc`)."""
    parts = name.split(".")
    if len(parts) == 1:
        return None
    return parts[1]


def import_graph() -> dict[str, set[str]]:
    """module -> the wbc modules it imports (each resolved to a module file; packages by __init__)."""
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        name = module_name(path)
        targets = set()
        for imp in imported_modules(path):
            if module_file(imp) is not None:
                targets.add(imp)
        graph[name] = targets - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the floors: a room importing one that is not below it."""
    bad = []
    for src, targets in graph.items():
        a = room(src)
        for dst in sorted(targets):
            b = room(dst)
            if a is None:
                if b is not None and dst not in ROOT_IMPORTS:
                    bad.append(f"{src} -> {dst}: the package root imports only wbc.core.dispatch")
            elif b is not None and b != a and b not in ALLOWED[a]:
                bad.append(f"{src} ({a}) -> {dst} ({b})")
    return bad


def test_every_module_is_in_a_known_room() -> None:
    rooms = {room(m) for m in import_graph()} - {None}
    assert rooms <= set(ALLOWED), f"unknown rooms {sorted(rooms - set(ALLOWED))}: add them to ALLOWED and docs/design.md"
    top = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert not top, f"modules outside a room: {sorted(top)}"


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_no_room_imports_a_higher_one() -> None:
    assert upward(import_graph()) == []


def test_the_checks_catch_a_circle_and_an_upward_import() -> None:
    graph = {"wbc.results.evaluate": {"wbc.results.predictors"}, "wbc.results.predictors": {"wbc.results.evaluate"},
             "wbc.data.store": {"wbc.learn.train"}, "wbc.learn.train": {"wbc.core.errors"}, "wbc.core.errors": set()}
    assert circles(graph) == [["wbc.results.evaluate", "wbc.results.predictors"]]
    assert upward(graph) == ["wbc.data.store (data) -> wbc.learn.train (learn)"]
    assert upward({"wbc.dedup.groups": {"wbc.cells.segment"}}) == ["wbc.dedup.groups (dedup) -> wbc.cells.segment (cells)"]
    assert upward({"wbc": {"wbc.core.dispatch", "wbc.core.params"}}) == [
        "wbc -> wbc.core.params: the package root imports only wbc.core.dispatch"]
