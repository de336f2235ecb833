"""One safe reading layer for the dataset archives: zip, rar, tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz)
and plain folders.

- `list_entries(path, limits)` parses and validates the listing before any byte is read: member names
  (no absolute paths, no `..`, no drive letters or backslashes, no duplicates), declared sizes against
  the limits, encryption, and members whose path goes through a link member.
- `iter_members(path, limits, on_skip)` yields the regular files, sorted by name, with their bytes.
  Directories are skipped; symbolic and hard links are never followed nor yielded: they go to
  `on_skip` as `Skipped` records so nothing is silently dropped. Real decompressed bytes are counted
  against the limits (an archive can lie about its sizes).
- `safe_extract(path, target, limits)` writes the regular files under `target` and nothing outside it.

Zip and tar are read in-process. RAR listings are parsed in Python by `rarfile`; the data is
extracted ONCE by the `unar` tool (solid archives cannot be read member by member without
re-decompressing from the start) into a private temporary folder, asking it for the regular files
only (by index), then that folder is walked without following links.

The rooms: `members` (entries, limits, the shared checks, the reader interface), `formats` (zip,
tar, folders), `rar` (rarfile + unar); this module picks the reader and holds the three entry
points above.
"""
from __future__ import annotations

import lzma
import os
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from wbc.core.errors import ArchiveError
from wbc.data.archives.formats import DirReader, TarReader, ZipReader
from wbc.data.archives.members import (DIR, FILE, HARDLINK, LINK_KINDS, OTHER, SYMLINK, Budget, Entry, Limits,
                                       Member, Reader, SkipCallback, Skipped, clean_name, link_escapes, skip_reason,
                                       validate_entries)
from wbc.data.archives.rar import RarReader

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")


def archive_format(path: str | Path) -> str:
    """`zip`, `rar`, `tar` or `dir`, from the file's magic bytes (then its suffix)."""
    path = Path(path)
    if path.is_dir():
        return "dir"
    if not path.is_file():
        raise ArchiveError(f"archive not found: {path}")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if zipfile.is_zipfile(path):
        return "zip"
    name = path.name.lower()
    if name.endswith(_TAR_SUFFIXES) or _is_tar(path):
        return "tar"
    raise ArchiveError(f"unsupported archive format: {path} (zip, rar, tar, tar.gz, tgz, tar.bz2, tar.xz)")


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return False


_READERS = {"zip": ZipReader, "tar": TarReader, "rar": RarReader, "dir": DirReader}


def open_reader(path: str | Path, limits: Limits | Mapping[str, Any] | None = None) -> Reader:
    """The reader for `path` (archive or folder)."""
    path = Path(path)
    return _READERS[archive_format(path)](path, Limits.coerce(limits))


def list_entries(path: str | Path, limits: Limits | Mapping[str, Any] | None = None) -> list[Entry]:
    """The validated listing of `path`, sorted by name (see module docstring)."""
    limits = Limits.coerce(limits)
    with open_reader(path, limits) as reader:
        return validate_entries(reader.entries(), limits, path)


def iter_members(
    path: str | Path,
    limits: Limits | Mapping[str, Any] | None = None,
    on_skip: SkipCallback | None = None,
    on_listing: Callable[[list[Entry]], None] | None = None,
) -> Iterator[Member]:
    """Yield the regular-file members of an archive or folder, sorted by name, with their bytes.

    Links and special files are reported to `on_skip` (in name order, before the files are read)
    and never followed. `on_listing` receives the validated listing first (e.g. for a progress
    total). Raises ArchiveError for unsafe, encrypted, oversized or corrupt archives.
    """
    limits = Limits.coerce(limits)
    with open_reader(path, limits) as reader:
        entries = validate_entries(reader.entries(), limits, path)
        if on_listing is not None:
            on_listing(entries)
        for e in entries:
            if e.kind not in (FILE, DIR) and on_skip is not None:
                on_skip(Skipped(e.name, e.kind, skip_reason(e)))
        yield from reader.read_files([e for e in entries if e.kind == FILE])


def safe_extract(
    path: str | Path,
    target: str | Path,
    limits: Limits | Mapping[str, Any] | None = None,
    on_skip: SkipCallback | None = None,
) -> list[str]:
    """Extract the regular files (and folders) of `path` under `target`; return the file names.

    Refuses (ArchiveError, before writing anything) links whose target leaves the archive, plus
    everything `iter_members` refuses. Links that stay inside are not created (reported to
    `on_skip`). Files are opened with O_NOFOLLOW and every parent folder is checked to resolve
    inside `target`, so nothing is ever written outside it.
    """
    limits = Limits.coerce(limits)
    target = Path(target)
    with open_reader(path, limits) as reader:
        entries = validate_entries(reader.entries(), limits, path)
        for e in entries:
            if e.kind in LINK_KINDS and link_escapes(e):
                raise ArchiveError(f"unsafe link in {path}: {e.name} -> {e.target or '?'} leaves the target folder")
        target.mkdir(parents=True, exist_ok=True)
        real_target = os.path.realpath(target)
        for e in entries:
            if e.kind == DIR:
                _make_dirs(target, e.name, real_target)
            elif e.kind != FILE and on_skip is not None:
                on_skip(Skipped(e.name, e.kind, skip_reason(e)))
        written = []
        for m in reader.read_files([e for e in entries if e.kind == FILE]):
            parent = _make_dirs(target, posixpath.dirname(m.name), real_target)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(parent / posixpath.basename(m.name), flags, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(m.data)
            written.append(m.name)
        return written


def _make_dirs(target: Path, rel: str, real_target: str) -> Path:
    """Create target/rel folder by folder, refusing any component that is a link or leaves target."""
    current = target
    for part in [p for p in rel.split("/") if p]:
        current = current / part
        if current.is_symlink():
            raise ArchiveError(f"refusing to write through the link {current}")
        current.mkdir(exist_ok=True)
        if os.path.commonpath([real_target, os.path.realpath(current)]) != real_target:
            raise ArchiveError(f"refusing to write outside {target}: {current}")
    return current


__all__ = ["DIR", "FILE", "HARDLINK", "LINK_KINDS", "OTHER", "SYMLINK", "Budget", "Entry", "Limits", "Member", "Reader",
           "SkipCallback", "Skipped", "archive_format", "clean_name", "iter_members", "link_escapes", "list_entries",
           "open_reader", "safe_extract", "skip_reason", "validate_entries"]
