"""The source registry (``src/wbc/data/sources.yaml``).

Registry: :func:`load_registry` reads and validates the packaged YAML; :func:`get_source`,
:func:`profile_sources` and :func:`profile_split` look entries up; unknown names raise
:class:`wbc.core.errors.ConfigError` listing the valid ones.

An entry's ``size``/``sha256`` are the values its provider publishes (null when none).
Downloading, verifying and the checksum lock that pins unpublished checksums on first use are
:mod:`wbc.data.fetch`.
"""
from __future__ import annotations

import copy
import functools
import importlib.resources
import re
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

import yaml

import wbc
from wbc.core.errors import ConfigError

ROLES = ("pool", "external")
SPLITS = ("train", "test", "external")
FORMATS = ("zip", "rar", "tar", "tar.gz", "tgz", "tar.bz2", "tbz2", "tar.xz", "txz")
GENERATORS = ("synthetic",)
REQUIRED_KEYS = ("title", "file", "format", "classes", "role", "split")


# --------------------------------------------------------------------------- registry


def load_registry(path: str | Path | None = None) -> dict[str, Any]:
    """Return the validated registry (the packaged ``sources.yaml`` unless ``path`` is given).

    Raises ConfigError listing every problem found (missing keys, bad role/label, ...).
    """
    if path is None:
        return copy.deepcopy(_packaged_registry())
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"source registry not found: {path}")
    return _parse_registry(path.read_text(encoding="utf-8"), str(path))


@functools.lru_cache(maxsize=1)
def _packaged_registry() -> dict[str, Any]:
    text = importlib.resources.files("wbc.data").joinpath("sources.yaml").read_text(encoding="utf-8")
    return _parse_registry(text, "wbc/data/sources.yaml")


def _parse_registry(text: str, where: str) -> dict[str, Any]:
    try:
        registry = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid source registry {where}: not valid YAML ({exc})") from None
    problems = validate_registry(registry)
    if problems:
        raise ConfigError(f"invalid source registry {where}: " + "; ".join(problems))
    return registry


def validate_registry(registry: Any) -> list[str]:
    """Return the problems of a parsed registry (an empty list when it is valid)."""
    if not isinstance(registry, dict):
        return ["the top level must be a mapping with `sources` and `profiles`"]
    problems: list[str] = []
    labels = registry.get("labels", list(wbc.LABELS))
    if list(labels or []) != list(wbc.LABELS):
        problems.append(f"labels must be {list(wbc.LABELS)}, got {labels}")
    sources = registry.get("sources")
    if not isinstance(sources, dict) or not sources:
        return problems + ["`sources` must be a non-empty mapping"]
    for sid, entry in sources.items():
        problems += [f"sources.{sid}: {p}" for p in _source_problems(entry)]
    problems += _duplicate_files(sources)
    profiles = registry.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        return problems + ["`profiles` must be a non-empty mapping"]
    for name, prof in profiles.items():
        problems += [f"profiles.{name}: {p}" for p in _profile_problems(prof, sources)]
    return problems


def _source_problems(entry: Any) -> list[str]:
    """Problems of one source entry."""
    if not isinstance(entry, dict):
        return ["must be a mapping"]
    problems = [f"missing key `{k}`" for k in REQUIRED_KEYS if k not in entry]
    problems += _origin_problems(entry)
    file = entry.get("file")
    if "file" in entry and (not isinstance(file, str) or not file or file != Path(file).name
                            or file in (".", "..") or "\\" in file):
        problems.append(f"file must be a plain file name, got {file!r}")
    if "format" in entry and entry["format"] not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}, got {entry['format']!r}")
    if "role" in entry and entry["role"] not in ROLES:
        problems.append(f"role must be one of {', '.join(ROLES)}, got {entry['role']!r}")
    if "split" in entry and entry["split"] not in SPLITS:
        problems.append(f"split must be one of {', '.join(SPLITS)}, got {entry['split']!r}")
    problems += _class_problems(entry)
    problems += checksum_problems(entry)
    return problems


def _origin_problems(entry: dict) -> list[str]:
    """A source is downloaded (url/urls) or generated (generator), not both."""
    if "generator" in entry:
        if entry["generator"] not in GENERATORS:
            return [f"generator must be one of {', '.join(GENERATORS)}, got {entry['generator']!r}"]
        return ["has both a generator and url(s)"] if ("url" in entry or "urls" in entry) else []
    urls = source_urls(entry)
    if not urls:
        return ["needs `url`/`urls` (or `generator`)"]
    return [f"url must be http(s)://..., got {u!r}" for u in urls
            if not isinstance(u, str) or urlparse(u).scheme not in ("http", "https")]


def _class_problems(entry: dict) -> list[str]:
    classes = entry.get("classes")
    if "classes" not in entry:
        return []
    if not isinstance(classes, dict) or not classes:
        return ["classes must be a non-empty mapping folder -> label"]
    problems = [f"classes.{folder}: unknown label {label!r} (valid: {', '.join(wbc.LABELS)})"
                for folder, label in classes.items() if label not in wbc.LABELS]
    exclude = entry.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        problems.append("exclude must be a list of class folder names")
    elif set(exclude) & set(classes):
        problems.append(f"folders both in classes and exclude: {sorted(set(exclude) & set(classes))}")
    return problems


def checksum_problems(entry: dict) -> list[str]:
    """Problems of the ``size``/``sha256`` of an entry (or a lock pin): null or valid values."""
    problems = []
    size, sha = entry.get("size"), entry.get("sha256")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        problems.append(f"size must be null or a byte count, got {size!r}")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        problems.append(f"sha256 must be null or 64 hex digits, got {sha!r}")
    return problems


def _duplicate_files(sources: dict) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for sid, entry in sources.items():
        file = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(file, str) and file in seen:
            problems.append(f"sources.{sid}: file {file!r} is also used by {seen[file]}")
        elif isinstance(file, str):
            seen[file] = sid
    return problems


def _profile_problems(prof: Any, sources: dict) -> list[str]:
    if not isinstance(prof, dict):
        return ["must be a mapping with `sources` and `split`"]
    ids = prof.get("sources")
    problems = []
    if not isinstance(ids, list) or not ids:
        problems.append("`sources` must be a non-empty list of source ids")
    else:
        problems += [f"unknown source {s!r} (valid: {', '.join(sources)})" for s in ids if s not in sources]
    split = prof.get("split")
    if not isinstance(split, dict) or set(split) != {"val", "test"}:
        return problems + ["`split` must be a mapping with exactly `val` and `test`"]
    for key, value in split.items():
        if not _valid_size(value):
            problems.append(f"split.{key} must be a fraction in (0, 1) or a positive count, got {value!r}")
    return problems


def _valid_size(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return isinstance(value, float) and 0.0 < value < 1.0


def source_urls(entry: dict) -> list[str]:
    """The origin URLs of a source entry, in the order to try them (``url`` then ``urls``)."""
    urls = [entry["url"]] if entry.get("url") else []
    extra = entry.get("urls") or []
    return urls + (list(extra) if isinstance(extra, list) else [extra])


def _registry(registry: dict | None) -> dict:
    return load_registry() if registry is None else registry


def source_ids(registry: dict | None = None) -> list[str]:
    """All source ids, in registry order."""
    return list(_registry(registry)["sources"])


def profile_names(registry: dict | None = None) -> list[str]:
    """All profile names, in registry order."""
    return list(_registry(registry)["profiles"])


def get_source(source_id: str, registry: dict | None = None) -> dict[str, Any]:
    """Return a copy of one source entry with ``id`` added and defaults filled in."""
    reg = _registry(registry)
    if source_id not in reg["sources"]:
        raise ConfigError(f"unknown source {source_id!r}; valid sources: {', '.join(reg['sources'])}")
    entry = copy.deepcopy(reg["sources"][source_id])
    for key, default in (("exclude", []), ("root", None), ("size", None), ("sha256", None)):
        entry.setdefault(key, default)
    entry["exclude"] = entry["exclude"] or []
    entry["id"] = source_id
    return entry


def _get_profile(profile: str, registry: dict | None) -> dict:
    reg = _registry(registry)
    if profile not in reg["profiles"]:
        raise ConfigError(f"unknown data profile {profile!r}; valid profiles: {', '.join(reg['profiles'])}")
    return reg["profiles"][profile]


def profile_sources(profile: str, registry: dict | None = None) -> list[dict[str, Any]]:
    """The source entries (as :func:`get_source` returns them) of a named profile, in order."""
    reg = _registry(registry)
    return [get_source(sid, reg) for sid in _get_profile(profile, reg)["sources"]]


def profile_split(profile: str, registry: dict | None = None) -> dict[str, float | int]:
    """The default ``{"val": ..., "test": ...}`` split sizes of a named profile."""
    return dict(_get_profile(profile, registry)["split"])


def resolve_names(names: Iterable[str], registry: dict | None = None) -> list[dict[str, Any]]:
    """Expand profile names and source ids into source entries (first occurrence kept)."""
    reg = _registry(registry)
    out: dict[str, dict] = {}
    for name in names:
        if name in reg["profiles"]:
            entries = profile_sources(name, reg)
        elif name in reg["sources"]:
            entries = [get_source(name, reg)]
        else:
            raise ConfigError(f"unknown source or profile {name!r}; profiles: {', '.join(reg['profiles'])}; "
                              f"sources: {', '.join(reg['sources'])}")
        for entry in entries:
            out.setdefault(entry["id"], entry)
    return list(out.values())
