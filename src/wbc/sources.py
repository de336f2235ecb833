"""The source registry (``src/wbc/sources.yaml``) and the download layer.

Registry: :func:`load_registry` reads and validates the packaged YAML; :func:`get_source`,
:func:`profile_sources` and :func:`profile_split` look entries up; unknown names raise
:class:`wbc.errors.ConfigError` listing the valid ones.

Download: :func:`fetch` puts one source's archive in a folder, from a mirror (a local folder
or an http(s) base URL, looked up by file name) or from its origin URL(s). HTTP downloads are
streamed to ``<dest>.part`` with connect/read timeouts, retried with exponential backoff on
connection errors, timeouts and 5xx answers, resumed with ``Range`` requests, verified
(size and sha256 when the registry knows them) and moved into place atomically.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.resources
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable
from urllib.parse import quote, unquote, urlparse

import requests
import yaml
from tqdm import tqdm

import wbc
from wbc.errors import ChecksumError, ConfigError, DownloadError

ROLES = ("pool", "external")
SPLITS = ("train", "test", "external")
FORMATS = ("zip", "rar", "tar", "tar.gz", "tgz", "tar.bz2", "tbz2", "tar.xz", "txz")
GENERATORS = ("synthetic",)
REQUIRED_KEYS = ("title", "file", "format", "classes", "role", "split")
CHUNK = 1 << 16
USER_AGENT = f"wbc-repro/{wbc.__version__} (+python-requests)"


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
    text = importlib.resources.files("wbc").joinpath("sources.yaml").read_text(encoding="utf-8")
    return _parse_registry(text, "wbc/sources.yaml")


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
    problems += _checksum_problems(entry)
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


def _checksum_problems(entry: dict) -> list[str]:
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


# --------------------------------------------------------------------------- fetch


@dataclass(frozen=True)
class FetchResult:
    """Where a fetched archive is, its sha256 and size, and where it came from."""

    path: Path
    sha256: str
    size: int
    origin: str          # the URL or mirror file used ("existing file" when reused)
    reused: bool = False  # True when a verified file was already in place


class _Retryable(Exception):
    """A transient failure (connection error, timeout, 5xx): try again."""


class _NotThere(Exception):
    """A mirror does not hold the file (fall back to the next candidate)."""


def fetch(source: dict, dest_dir: str | Path, mirror: str | Path | None = None, timeout: float = 30,
          retries: int = 5, backoff: float = 1.0, progress: bool = True) -> FetchResult:
    """Put ``source``'s archive in ``dest_dir/<file>`` and return what was fetched.

    Tries the mirror first (when given), then the origin URL(s). ``timeout`` is the connect
    and read timeout in seconds (no data for that long = a failed try); a failed try is
    retried ``retries`` times, sleeping ``backoff * 2**k`` seconds. Raises DownloadError
    (nothing fetched: names every place tried and how to use a mirror) or ChecksumError
    (bytes differ from the registry's size/sha256; the bad file is deleted).
    """
    if source.get("generator"):
        raise ConfigError(f"source {source.get('id')!r} is generated ({source['generator']}), not downloaded")
    if timeout <= 0 or retries < 0 or backoff < 0:
        raise ConfigError(f"download needs timeout > 0, retries >= 0, backoff >= 0 "
                          f"(got {timeout}, {retries}, {backoff})")
    dest = Path(dest_dir) / source["file"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    existing = _reuse_existing(source, dest)
    if existing is not None:
        return existing
    opts = _Options(timeout=timeout, retries=retries, backoff=backoff, progress=progress)
    failures: list[str] = []
    for kind, where in _candidates(source, mirror):
        try:
            return _fetch_one(source, dest, kind, where, opts)
        except (_NotThere, DownloadError) as exc:
            if isinstance(exc, ChecksumError):
                raise
            failures.append(f"{'origin' if kind == 'http' else 'mirror'} {where}: {exc}")
    raise DownloadError(_failure_message(source, failures, mirror))


@dataclass(frozen=True)
class _Options:
    timeout: float
    retries: int
    backoff: float
    progress: bool


def _candidates(source: dict, mirror: str | Path | None) -> list[tuple[str, str]]:
    """(kind, location) pairs to try in order: mirror files/URL, then origin URLs."""
    out: list[tuple[str, str]] = []
    if mirror is not None and str(mirror) != "":
        out.append(_mirror_candidate(source, str(mirror)))
    return out + [("http", url) for url in source_urls(source)]


def _mirror_candidate(source: dict, mirror: str) -> tuple[str, str]:
    parsed = urlparse(mirror)
    if parsed.scheme in ("http", "https"):
        return "mirror-http", mirror.rstrip("/") + "/" + quote(source["file"])
    if parsed.scheme == "file":
        mirror = unquote(parsed.path)
    return "mirror-dir", str(Path(mirror).expanduser())


def _fetch_one(source: dict, dest: Path, kind: str, where: str, opts: _Options) -> FetchResult:
    """Fetch from one candidate into ``dest`` (temp file, verify, atomic rename)."""
    part = dest.with_name(dest.name + ".part")
    try:
        if kind == "mirror-dir":
            origin, digest = _copy_local(_find_in_folder(source, Path(where)), part, opts.progress)
        else:
            origin, digest = where, _download(where, part, opts, mirror=kind == "mirror-http")
        size = part.stat().st_size
        _verify(source, size, digest, origin)
    except BaseException as exc:
        keep = isinstance(exc, KeyboardInterrupt) and kind != "mirror-dir"  # resumable later
        if not keep:
            part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return FetchResult(path=dest, sha256=digest, size=size, origin=origin)


def _find_in_folder(source: dict, folder: Path) -> Path:
    """``<mirror>/<file>`` then ``<mirror>/<id>/<file>``; _NotThere when neither exists."""
    if not folder.is_dir():
        raise _NotThere("folder does not exist")
    tried = [folder / source["file"]]
    if source.get("id"):
        tried.append(folder / source["id"] / source["file"])
    for path in tried:
        if path.is_file():
            return path
    raise _NotThere(f"{source['file']} not found (looked for {', '.join(str(p) for p in tried)})")


def _copy_local(src: Path, part: Path, progress: bool) -> tuple[str, str]:
    """Stream-copy a mirror file into ``part`` and return (origin, sha256)."""
    hasher = hashlib.sha256()
    with src.open("rb") as fin, part.open("wb") as fout, _bar(part, src.stat().st_size, 0, progress) as bar:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
            hasher.update(chunk)
            bar.update(len(chunk))
    return str(src), hasher.hexdigest()


def _bar(part: Path, total: int | None, initial: int, progress: bool) -> tqdm:
    name = part.name[: -len(".part")] if part.name.endswith(".part") else part.name
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None if progress else True, leave=False)


def _verify(source: dict, size: int, digest: str, origin: str) -> None:
    """ChecksumError when size or sha256 differ from the registry's (when it knows them)."""
    want_size, want_sha = source.get("size"), source.get("sha256")
    if want_size is not None and size != want_size:
        raise ChecksumError(f"{source['file']} from {origin}: size mismatch: expected {want_size} bytes, "
                            f"got {size} (the file was deleted)")
    if want_sha and digest.lower() != want_sha.lower():
        raise ChecksumError(f"{source['file']} from {origin}: sha256 mismatch: expected {want_sha.lower()}, "
                            f"got {digest} (the file was deleted)")


def _reuse_existing(source: dict, dest: Path) -> FetchResult | None:
    """A FetchResult for an already complete ``dest``; None (and a stale file removed) otherwise."""
    if not dest.is_file():
        return None
    size = dest.stat().st_size
    if source.get("size") is not None and size != source["size"]:
        dest.unlink()
        return None
    digest = file_sha256(dest)
    if source.get("sha256") and digest.lower() != source["sha256"].lower():
        dest.unlink()
        return None
    return FetchResult(path=dest, sha256=digest, size=size, origin="existing file", reused=True)


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file (read in 1 MiB chunks)."""
    hasher = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _failure_message(source: dict, failures: list[str], mirror: Any) -> str:
    head = f"could not fetch {source.get('id', source['file'])} ({source['file']}): " + "; ".join(failures)
    if mirror:
        return head + f". Put {source['file']} in the mirror ({mirror}) or check the connection."
    return (head + f". No internet? Put {source['file']} in a folder and run "
            f"`dvc repro -S data.mirror=/path/to/folder` (or `wbc download {source.get('id', '...')} "
            f"--mirror /path/to/folder`).")


# --------------------------------------------------------------------------- HTTP


def _download(url: str, part: Path, opts: _Options, mirror: bool = False) -> str:
    """Download ``url`` into ``part`` with retries and resume; return the sha256 of the result.

    A 404 from a mirror raises _NotThere (fall back to the origin); other 4xx raise DownloadError.
    """
    with requests.Session() as session:
        session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        for attempt in range(opts.retries + 1):
            try:
                return _attempt(session, url, part, opts, mirror)
            except _Retryable as exc:
                if attempt == opts.retries:
                    tries = opts.retries + 1
                    raise DownloadError(f"{exc} (gave up after {tries} {'try' if tries == 1 else 'tries'})") from None
                time.sleep(opts.backoff * 2 ** attempt)
    raise AssertionError("unreachable")


def _attempt(session: requests.Session, url: str, part: Path, opts: _Options, mirror: bool) -> str:
    """One GET (a Range request when ``part`` holds bytes already); return the sha256."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with session.get(url, headers=headers, stream=True, timeout=(opts.timeout, opts.timeout)) as resp:
            _check_status(resp, mirror)
            if resp.status_code == 416:
                return _range_not_satisfiable(resp, part, offset)
            start, total = _body_range(resp, offset, part)
            return _write_body(resp, part, start, total, opts.progress)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise _Retryable(_reason(exc)) from None
    except requests.RequestException as exc:
        raise DownloadError(_reason(exc)) from None


def _check_status(resp: requests.Response, mirror: bool) -> None:
    """Retry 5xx, 408 and 429; fail at once on other 4xx (a mirror's 404 means 'not there')."""
    code = resp.status_code
    if code >= 500 or code in (408, 429):
        raise _Retryable(f"HTTP {code} {resp.reason}")
    if code == 404 and mirror:
        raise _NotThere("HTTP 404 Not Found")
    if code == 404:
        raise DownloadError("HTTP 404 Not Found: the file is not at this URL (moved or removed?)")
    if code >= 400 and code != 416:
        raise DownloadError(f"HTTP {code} {resp.reason}")


def _range_not_satisfiable(resp: requests.Response, part: Path, offset: int) -> str:
    """416 on a resume: the part is complete when the server's total equals it; else restart."""
    match = re.fullmatch(r"bytes \*/(\d+)", resp.headers.get("Content-Range", "").strip())
    if match and int(match.group(1)) == offset:
        return file_sha256(part)
    part.unlink(missing_ok=True)
    raise _Retryable("HTTP 416 on resume (partial file larger than the remote file): restarting")


def _body_range(resp: requests.Response, offset: int, part: Path) -> tuple[int, int | None]:
    """(start offset of this body, total file size or None); validates a 206's Content-Range."""
    if resp.status_code != 206:  # a 200: the whole file (also when the server ignored our Range)
        length = resp.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
    if not match or int(match.group(1)) != offset or int(match.group(2)) < offset:
        part.unlink(missing_ok=True)
        raise _Retryable(f"bad Content-Range {resp.headers.get('Content-Range')!r} for a resume at byte "
                         f"{offset}: restarting from zero")
    return offset, None if match.group(3) == "*" else int(match.group(3))


def _write_body(resp: requests.Response, part: Path, start: int, total: int | None, progress: bool) -> str:
    """Append (start > 0) or write the body to ``part``; _Retryable when it ends early."""
    hasher = _prefix_hash(part, start)
    with part.open("ab" if start else "wb") as fh, _bar(part, total, start, progress) as bar:
        for chunk in resp.iter_content(CHUNK):
            fh.write(chunk)
            hasher.update(chunk)
            bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retryable(f"connection closed after {size} of {total} bytes")
    return hasher.hexdigest()


def _prefix_hash(part: Path, start: int) -> "hashlib._Hash":
    """A sha256 object fed with the first ``start`` bytes of ``part`` (the resumed prefix)."""
    hasher = hashlib.sha256()
    if start:
        with part.open("rb") as fh:
            _feed(hasher, fh, start)
    return hasher


def _feed(hasher: Any, fh: BinaryIO, count: int) -> None:
    while count > 0 and (chunk := fh.read(min(1 << 20, count))):
        hasher.update(chunk)
        count -= len(chunk)


def _reason(exc: BaseException) -> str:
    """A short human reason for a requests/urllib3 exception (no object reprs)."""
    inner: Any = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None) or inner
    text = str(reason)
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*", "", text)
    text = re.sub(r"\(Caused by \w+\((.*)\)\)$", r"\1", text)
    if isinstance(exc, requests.Timeout):
        kind = "timed out"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
        kind = "connection broken"
    elif isinstance(exc, requests.ConnectionError):
        kind = "connection failed"
    else:
        kind = type(exc).__name__
    return f"{kind}: {text.strip() or type(inner).__name__}"
