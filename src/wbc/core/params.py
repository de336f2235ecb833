"""Reading params.yaml (the DVC params file) for stage scripts and the CLI, with its named recipe.

`recipe: <name>` selects a named setting of `recipes.yaml` (beside this module): the keys the recipe
lists replace params.yaml's (`apply_recipe`), so `dvc exp run -S recipe=other_labs` is one command
that changes the crop, the training and the test-time levers together. Every stage whose params a
recipe can touch depends on `recipe` (dvc.yaml) and reads params through `load_params`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import yaml

from wbc.core import dispatch
from wbc.core.errors import ConfigError, WbcError


#: The named recipes.
RECIPES_FILE = Path(__file__).with_name("recipes.yaml")
#: The `recipe` value that applies nothing.
NO_RECIPE = "none"


def recipes() -> dict[str, dict[str, dict[str, Any]]]:
    """{name: {section: {key: value}}} of `recipes.yaml`."""
    return yaml.safe_load(RECIPES_FILE.read_text(encoding="utf-8")) or {}


def apply_recipe(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the keys of its `recipe` (None / "none": unchanged) set; a ConfigError for an
    unknown recipe. The result keeps `recipe`, so outputs can record which one made them."""
    name = params.get("recipe") or NO_RECIPE
    if name == NO_RECIPE:
        return params
    table = recipes()
    if name not in table:
        raise ConfigError(f"unknown recipe {name!r}; valid: {', '.join([NO_RECIPE, *table])} ({RECIPES_FILE.name})")
    out = dict(params)
    for section, values in table[name].items():
        out[section] = {**dict(out.get(section) or {}), **values}
    return out


def load_params(path: str | Path = "params.yaml", *, recipe: bool = True) -> dict[str, Any]:
    """Return the whole params file as a dict, its `recipe` applied (`apply_recipe`; `recipe=False`:
    the file as written); a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path.resolve()} (run from the project root)")
    with path.open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    return apply_recipe(params) if recipe else params


def run_stage(name: str, main: Callable[[], int]) -> NoReturn:
    """Entry point of a stage script: exit with main()'s code; a WbcError becomes one clear line
    on stderr (`<stage>: error: ...`) and exit code 2, with no traceback."""
    try:
        dispatch.check()  # NumPy / OpenCV run the pinned SIMD code (wbc.core.dispatch)
        sys.exit(main())
    except WbcError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
