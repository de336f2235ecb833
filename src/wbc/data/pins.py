"""Checksum pins of the downloaded sources (trust on first use): the lock file and its rules.

The lock (``sources.lock.yaml``) sits at the project root beside ``dvc.lock``
(:func:`lock_path`: the nearest folder up from the working directory holding ``dvc.yaml``, ``.dvc``
or ``.git``), never inside the installed package. It maps a source id to the ``file``, ``size``
and ``sha256`` recorded at its first fetch (sorted YAML, written atomically). A pin must agree
with what the registry publishes; :func:`expected_checksum` combines both into what a file must
match. Used by :mod:`wbc.data.fetch`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wbc.core.errors import ConfigError
from wbc.data import sources

LOCK_FILE = "sources.lock.yaml"
LOCK_HEADER = """\
# Checksum lock of the downloaded sources (trust on first use), at the project root beside dvc.lock.
# Written by `wbc download` and the download stage: the first download of a source pins its
# size and sha256 here; every later fetch or reuse of data/raw/<file> is verified against it.
# Commit this file. When upstream legitimately publishes a new version, re-pin the source with
# `wbc download --accept-new <source>`. Checksums published in sources.yaml win: a pin must agree.
"""

@dataclass(frozen=True)
class Expected:
    """What a source's archive must match (None = not known yet) and where the values come from."""

    size: int | None
    sha256: str | None
    published: bool  # a value comes from sources.yaml (the provider's published checksum)
    pinned: bool     # a value comes from the lock (pinned when first fetched)


PROJECT_MARKERS = ("dvc.yaml", ".dvc", ".git")


def project_root(start: str | Path | None = None) -> Path:
    """The project folder: the nearest of ``start`` (default: the working directory) and its parents
    holding ``dvc.yaml``, ``.dvc`` or ``.git``; ``start`` itself when none does."""
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return here


def lock_path() -> Path:
    """The project's lock file, ``<project root>/sources.lock.yaml`` beside ``dvc.lock``: a run pins
    sources in the user's project, never in the library's source tree or site-packages."""
    return project_root() / LOCK_FILE


def lock_key(source: dict) -> str:
    """The key of a source in the lock: its id (its file name when it has none)."""
    return source.get("id") or source["file"]


def load_lock(path: str | Path | None = None) -> dict[str, dict]:
    """The pins of a lock file, ``{source_id: {"file", "size", "sha256"}}`` ({} when it does not exist).

    Raises ConfigError when the file is not a valid lock.
    """
    path = lock_path() if path is None else Path(path)
    if not path.is_file():
        return {}
    try:
        pins = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid checksum lock {path}: not valid YAML ({exc})") from None
    problems = lock_problems(pins)
    if problems:
        raise ConfigError(f"invalid checksum lock {path}: " + "; ".join(problems))
    return pins


def save_lock(pins: dict[str, dict], path: str | Path | None = None) -> Path:
    """Write ``pins`` (header comment, then sorted by source id and key) atomically; return the path."""
    path = lock_path() if path is None else Path(path)
    text = LOCK_HEADER + yaml.safe_dump(pins, sort_keys=True, default_flow_style=False, allow_unicode=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def make_pin(source: dict, size: int, sha256: str) -> dict[str, Any]:
    """The lock entry of a source's archive."""
    return {"file": source["file"], "size": size, "sha256": sha256.lower()}


def lock_problems(pins: Any, registry: dict | None = None) -> list[str]:
    """Problems of parsed pins; with ``registry``, also pins of unknown or generated sources and
    pins that disagree with their entry (file name, published size or sha256)."""
    if not isinstance(pins, dict):
        return ["the top level must be a mapping source id -> {file, size, sha256}"]
    problems = [f"{sid}: {p}" for sid, pin in pins.items() for p in _pin_problems(pin)]
    if registry is None or problems:
        return problems
    for sid, pin in pins.items():
        entry = registry["sources"].get(sid)
        if entry is None:
            problems.append(f"{sid}: not a source of the registry")
        elif entry.get("generator"):
            problems.append(f"{sid}: a generated source is never pinned")
        else:
            problems += [f"{sid}: {p}" for p in pin_disagreements(entry, pin)]
    return problems


def _pin_problems(pin: Any) -> list[str]:
    if not isinstance(pin, dict) or set(pin) != {"file", "size", "sha256"}:
        return ["must be a mapping with exactly `file`, `size` and `sha256`"]
    problems = [] if isinstance(pin["file"], str) and pin["file"] else ["file must be a file name"]
    if pin["size"] is None or pin["sha256"] is None:
        problems.append("size and sha256 must not be null")
    return problems + sources.checksum_problems(pin)


def pin_disagreements(entry: dict, pin: dict) -> list[str]:
    """How a pin disagrees with its registry entry (file name, published size or sha256)."""
    out = []
    if pin["file"] != entry["file"]:
        out.append(f"pins file {pin['file']!r} but the registry's file is {entry['file']!r}")
    for key in ("size", "sha256"):
        published = entry.get(key)
        if published is not None and str(published).lower() != str(pin[key]).lower():
            out.append(f"pins {key} {pin[key]} but sources.yaml publishes {published}")
    return out


def expected_checksum(source: dict, pins: dict[str, dict], where: str | Path = LOCK_FILE) -> Expected:
    """What ``source``'s archive must match: its published size/sha256, completed by its pin.

    Raises ConfigError when the pin (from the lock ``where``) disagrees with the entry.
    """
    pin = pins.get(lock_key(source))
    if pin is not None and (bad := pin_disagreements(source, pin)):
        raise ConfigError(f"{where}: the pin of {lock_key(source)} disagrees with the registry: {'; '.join(bad)}. "
                          f"Fix the lock, or re-pin with `wbc download --accept-new {lock_key(source)}`")
    size, sha = source.get("size"), source.get("sha256")
    published = size is not None or sha is not None
    if pin is None:
        return Expected(size, sha.lower() if sha else None, published, False)
    return Expected(pin["size"], pin["sha256"].lower(), published,
                    pinned=size is None or sha is None)
