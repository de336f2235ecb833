"""`wbc serve` settings: what the command and the web app need before the app exists.

The page lives in `wbc.apps.webapp` (FastAPI routes, uploads, classification, results discovery)
and `src/wbc/apps/web/` (plain HTML, CSS and vanilla JS; nothing is loaded from the internet); the
runner in `wbc.apps.serve`. Both import this module, which imports neither:

- `ServeConfig`: model file, reports folder, upload limits, device, host and port.
- `upload_limits(params_path)`: the `serve` section of params.yaml when present
  (`max_upload_mb`, `max_files`), else `DEFAULT_MAX_UPLOAD_MB` / `DEFAULT_MAX_FILES`.
- `check_host(host, allow_remote)`: loopback only unless remote access is asked for explicitly.
- `default_model(workspace)`: the pipeline's headline model file, when there is one.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wbc.core.errors import ConfigError, WbcError

#: Default total size of one upload (all files of one request), in MiB.
DEFAULT_MAX_UPLOAD_MB = 200
#: Default number of files in one upload (an archive counts as one file).
DEFAULT_MAX_FILES = 500
#: The model used when --model is not given: the headline model of the lowest seed.
HEADLINE_PATTERN = "models/headline-*.ckpt"
#: Host names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class ServeConfig:
    """Everything the web app needs; paths relative to the workspace the server runs in."""

    model: Path | None = None
    reports: Path = Path("reports")
    workspace: Path = Path(".")
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20
    max_files: int = DEFAULT_MAX_FILES
    batch_size: int = 32
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    allow_remote: bool = False


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual names of this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind address unless `allow_remote` (the page has no login)."""
    if not is_loopback(host) and not allow_remote:
        raise WbcError(f"refusing to listen on {host!r}: the page has no login and would let anyone on the "
                       "network upload images and read reports/. Use the default 127.0.0.1, or pass "
                       "--allow-remote to expose it on purpose")


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"serve.{key} must be a positive integer, got {value!r}")
    return value


def upload_limits(params_path: str | Path = "params.yaml") -> tuple[int, int]:
    """(max upload MiB, max files) from params.yaml's optional `serve` section, else the defaults."""
    section: Any = {}
    path = Path(params_path)
    if path.is_file():
        section = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("serve") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: `serve` must be a mapping, got {section!r}")
    return (_positive_int(section.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB), "max_upload_mb"),
            _positive_int(section.get("max_files", DEFAULT_MAX_FILES), "max_files"))


def _seed_key(path: Path) -> tuple[int, str]:
    seed = path.stem.rsplit("-", 1)[-1]
    return (int(seed) if seed.isdigit() else 1 << 30, path.name)


def default_model(workspace: Path = Path(".")) -> Path | None:
    """The workspace's headline model file of the lowest seed (models/headline-<seed>.ckpt), or None."""
    headlines = sorted(workspace.glob(HEADLINE_PATTERN), key=_seed_key)
    return headlines[0] if headlines else None
