"""Reading params.yaml (the DVC params file) for stage scripts and the CLI."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import yaml

from wbc.core.errors import WbcError


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Return the whole params file as a dict; a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path.resolve()} (run from the project root)")
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def run_stage(name: str, main: Callable[[], int]) -> NoReturn:
    """Entry point of a stage script: exit with main()'s code; a WbcError becomes one clear line
    on stderr (`<stage>: error: ...`) and exit code 2, with no traceback."""
    try:
        sys.exit(main())
    except WbcError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
