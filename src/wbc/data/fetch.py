"""Fetching source archives: local or HTTP mirrors, origin URLs, and checksum verification.

:func:`fetch` puts one source's archive in a folder, from a mirror (a local folder or an http(s)
base URL, looked up by file name) or from its origin URL(s). HTTP downloads are streamed to
``<dest>.part`` with connect/read timeouts, retried with exponential backoff on connection
errors, timeouts and 5xx answers, resumed with ``Range`` requests, verified and moved into place
atomically.

Verification (trust on first use): a registry entry's ``size``/``sha256`` are what its provider
publishes (null when nothing is). The checksum lock (:mod:`wbc.data.pins`: ``sources.lock.yaml``
at the project root beside ``dvc.lock``, committed) pins the size and sha256 of each downloaded
source at its first fetch (sources publishing both need no pin; generated sources are never
fetched nor pinned). A
downloaded, copied or already present file must match the published values and the pin; a
mismatch raises ChecksumError naming the file, both sha256 (expected, got) and the fix.
``accept_new=True`` (``wbc download --accept-new``) forgets the pin and downloads again, for when
upstream legitimately published a new version.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlparse

import requests
from tqdm import tqdm

import wbc
from wbc.data import pins as pinning
from wbc.data import sources
from wbc.core.errors import ChecksumError, ConfigError, DownloadError

CHUNK = 1 << 16
USER_AGENT = f"wbc-repro/{wbc.__version__} (+python-requests)"


@dataclass(frozen=True)
class FetchResult:
    """Where a fetched archive is, its sha256 and size, and where it came from."""

    path: Path
    sha256: str
    size: int
    origin: str           # the URL or mirror file used ("existing file" when reused)
    reused: bool = False  # True when a verified file was already in place
    pinned: bool = False  # True when this fetch recorded the source's pin in the lock


@dataclass(frozen=True)
class _Target:
    """One source to fetch: where it goes, what it must match, and the lock that pins it."""

    source: dict
    dest: Path
    want: pinning.Expected
    lock: Path


@dataclass(frozen=True)
class _Options:
    timeout: float
    retries: int
    backoff: float
    progress: bool


class _Retryable(Exception):
    """A transient failure (connection error, timeout, 5xx): try again."""


class _NotThere(Exception):
    """A mirror does not hold the file (fall back to the next candidate)."""


def fetch(source: dict, dest_dir: str | Path, mirror: str | Path | None = None, timeout: float = 30,
          retries: int = 5, backoff: float = 1.0, progress: bool = True, lock: str | Path | None = None,
          accept_new: bool = False) -> FetchResult:
    """Put ``source``'s archive in ``dest_dir/<file>``, verified, and return what was fetched.

    A file already there is verified and reused. Otherwise tries the mirror first (when given),
    then the origin URL(s). ``timeout`` is the connect and read timeout in seconds (no data for
    that long = a failed try); a failed try is retried ``retries`` times, sleeping
    ``backoff * 2**k`` seconds. ``lock`` is the checksum lock (default: the project's,
    :func:`pinning.lock_path`); ``accept_new`` forgets the source's pin and
    deletes the file in ``dest_dir`` first. Raises DownloadError (nothing fetched: names every
    place tried and how to use a mirror) or ChecksumError (the bytes differ from the published or
    pinned size/sha256; a download is deleted, a file that was already there is kept).
    """
    _check_args(source, timeout, retries, backoff)
    lock_file = pinning.lock_path() if lock is None else Path(lock)
    pins = pinning.load_lock(lock_file)
    dest = Path(dest_dir) / source["file"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if accept_new:
        pins.pop(pinning.lock_key(source), None)
        for path in (dest, _part(dest)):
            path.unlink(missing_ok=True)
    target = _Target(source, dest, pinning.expected_checksum(source, pins, _show(lock_file)), lock_file)
    if dest.is_file():
        result = _reuse_existing(target)
    else:
        result = _fetch_any(target, mirror, _Options(timeout, retries, backoff, progress))
    return _record_pin(target, result, pins)


def _check_args(source: dict, timeout: float, retries: int, backoff: float) -> None:
    """ConfigError for a generated source or impossible download params."""
    if source.get("generator"):
        raise ConfigError(f"source {source.get('id')!r} is generated ({source['generator']}), not downloaded")
    if timeout <= 0 or retries < 0 or backoff < 0:
        raise ConfigError(f"download needs timeout > 0, retries >= 0, backoff >= 0 "
                          f"(got {timeout}, {retries}, {backoff})")


def _fetch_any(target: _Target, mirror: str | Path | None, opts: _Options) -> FetchResult:
    """Try every candidate in order; DownloadError naming them all when none delivers."""
    failures: list[str] = []
    for kind, where in _candidates(target.source, mirror):
        try:
            return _fetch_one(target, kind, where, opts)
        except (_NotThere, DownloadError) as exc:
            if isinstance(exc, ChecksumError):
                raise
            failures.append(f"{'origin' if kind == 'http' else 'mirror'} {where}: {exc}")
    raise DownloadError(_failure_message(target.source, failures, mirror))


def _candidates(source: dict, mirror: str | Path | None) -> list[tuple[str, str]]:
    """(kind, location) pairs to try in order: mirror files/URL, then origin URLs."""
    out: list[tuple[str, str]] = []
    if mirror is not None and str(mirror) != "":
        out.append(_mirror_candidate(source, str(mirror)))
    return out + [("http", url) for url in sources.source_urls(source)]


def _mirror_candidate(source: dict, mirror: str) -> tuple[str, str]:
    parsed = urlparse(mirror)
    if parsed.scheme in ("http", "https"):
        return "mirror-http", mirror.rstrip("/") + "/" + quote(source["file"])
    if parsed.scheme == "file":
        mirror = unquote(parsed.path)
    return "mirror-dir", str(Path(mirror).expanduser())


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _fetch_one(target: _Target, kind: str, where: str, opts: _Options) -> FetchResult:
    """Fetch from one candidate into ``dest`` (temp file, verify, atomic rename)."""
    part = _part(target.dest)
    try:
        if kind == "mirror-dir":
            origin, digest = _copy_local(_find_in_folder(target.source, Path(where)), part, opts.progress)
        else:
            origin, digest = where, _download(where, part, opts, mirror=kind == "mirror-http")
        size = part.stat().st_size
        _verify(target, size, digest, origin)
    except BaseException as exc:
        keep = isinstance(exc, KeyboardInterrupt) and kind != "mirror-dir"  # resumable later
        if not keep:
            part.unlink(missing_ok=True)
        raise
    os.replace(part, target.dest)
    return FetchResult(path=target.dest, sha256=digest, size=size, origin=origin)


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


def _reuse_existing(target: _Target) -> FetchResult:
    """The FetchResult of a file already in place, once verified (ChecksumError, file kept, if not)."""
    size, digest = target.dest.stat().st_size, file_sha256(target.dest)
    _verify(target, size, digest, origin=None)
    return FetchResult(path=target.dest, sha256=digest, size=size, origin="existing file", reused=True)


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file (read in 1 MiB chunks)."""
    hasher = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


# --------------------------------------------------------------------------- verification


def _verify(target: _Target, size: int, digest: str, origin: str | None) -> None:
    """ChecksumError when size or sha256 differ from what is published or pinned (when known).

    ``origin`` is where a download came from; None for a file that was already in place.
    """
    want = target.want
    if (want.size is None or size == want.size) and (want.sha256 is None or digest.lower() == want.sha256):
        return
    what = str(target.dest) if origin is None else f"{target.source['file']} from {origin}"
    expected = f"sha256 {want.sha256}" if want.sha256 else "sha256 not known yet"
    expected += f" ({want.size} bytes)" if want.size is not None else " (size not known yet)"
    raise ChecksumError(f"{what}: checksum mismatch: expected {expected}, {_known_by(target)}; "
                        f"got sha256 {digest} ({size} bytes). {_fix(target, origin)}")


def _known_by(target: _Target) -> str:
    """Where the expected values come from, for the error message."""
    lock = f"pinned in {_show(target.lock)} when first fetched"
    if target.want.published and target.want.pinned:
        return f"published in sources.yaml and {lock}"
    return "published in sources.yaml" if target.want.published else lock


def _fix(target: _Target, origin: str | None) -> str:
    """How to get out of a checksum mismatch."""
    sid = pinning.lock_key(target.source)
    if origin is None:
        head = (f"The file is not the expected one (tampered with, truncated or replaced): delete it and "
                f"download it again (`rm {target.dest}`, then `wbc download {sid}` or `dvc repro`)")
    else:
        head = f"The download was deleted: {origin} serves other bytes than expected (try another mirror)"
    if target.want.pinned:
        how = f"re-pin it with `wbc download --accept-new {sid}`"
    else:
        how = f"update size and sha256 of {sid} in sources.yaml"
    return f"{head}; if upstream legitimately published a new version, {how}."


def _record_pin(target: _Target, result: FetchResult, pins: dict[str, dict]) -> FetchResult:
    """Pin a verified file in the lock unless it is pinned already or fully published.

    A lock that cannot be written (read-only install) is a warning, not an error.
    """
    key, pin = pinning.lock_key(target.source), pinning.make_pin(target.source, result.size, result.sha256)
    source = target.source
    if pins.get(key) == pin or (source.get("size") is not None and source.get("sha256")):
        return result
    try:
        pinning.save_lock({**pins, key: pin}, target.lock)
    except OSError as exc:
        print(f"warning: could not pin {key} in {target.lock} ({exc}): later fetches of it are not verified",
              file=sys.stderr)
        return result
    return dataclasses.replace(result, pinned=True)


def _show(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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
