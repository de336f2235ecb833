"""What an archive holds: listing entries, members, skipped records, size limits, and the checks
every format shares (safe names, links, duplicates, declared and real sizes), plus the reader
interface each format implements (`Reader`)."""
from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wbc.core.errors import ArchiveError

FILE, DIR, SYMLINK, HARDLINK, OTHER = "file", "dir", "symlink", "hardlink", "other"
LINK_KINDS = (SYMLINK, HARDLINK)
CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Limits:
    """Size limits applied while reading an archive (declared sizes and real bytes)."""

    max_member_bytes: int = 100 * 2**20
    max_total_bytes: int = 64 * 2**30

    @classmethod
    def coerce(cls, value: Limits | Mapping[str, Any] | None) -> Limits:
        """Accept a Limits, a params mapping (extra keys ignored) or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, Limits):
            return value
        known = {k: int(value[k]) for k in ("max_member_bytes", "max_total_bytes") if value.get(k) is not None}
        return cls(**known)


@dataclass(frozen=True)
class Entry:
    """One listing entry: `kind` is file, dir, symlink, hardlink or other; `target` for links."""

    name: str
    size: int
    kind: str
    target: str = ""


@dataclass(frozen=True)
class Member:
    """A regular file read from an archive (posix `name` inside the archive)."""

    name: str
    size: int
    data: bytes

    def read(self) -> bytes:
        """The member's bytes."""
        return self.data


@dataclass(frozen=True)
class Skipped:
    """A listing entry that is not yielded as a file (link or special file), with the reason."""

    name: str
    kind: str
    reason: str


SkipCallback = Callable[[Skipped], None]


# ----------------------------------------------------------------------------- names and checks


def clean_name(raw: str, archive: str | Path = "") -> str:
    """Return the normalised posix member name, or raise ArchiveError when it is unsafe.

    `./` and empty components are dropped (tar archives made with `tar -C dir .`); absolute
    paths, drive letters, backslashes, NUL and `..` components are refused.
    """
    if "\x00" in raw or "\\" in raw or raw.startswith("/") or _DRIVE.match(raw):
        raise ArchiveError(f"unsafe member name {raw!r} in {archive}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"unsafe member name {raw!r} in {archive} (path traversal)")
    return "/".join(parts)


def link_escapes(entry: Entry) -> bool:
    """True when a link's target is unknown, absolute or resolves outside the archive root.

    Symlink targets are relative to the link's folder; hard-link targets to the archive root.
    """
    target = entry.target
    if not target or target.startswith("/") or "\\" in target or _DRIVE.match(target):
        return True
    base = posixpath.dirname(entry.name) if entry.kind == SYMLINK else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    return resolved == ".." or resolved.startswith("../")


def validate_entries(entries: list[Entry], limits: Limits, archive: str | Path) -> list[Entry]:
    """Check duplicates, declared sizes and members below a link; return entries sorted by name."""
    seen: set[str] = set()
    for e in entries:
        if e.name in seen and e.kind != DIR:
            raise ArchiveError(f"duplicate member {e.name!r} in {archive}")
        seen.add(e.name)
    files = [e for e in entries if e.kind == FILE]
    for e in files:
        if e.size > limits.max_member_bytes:
            raise ArchiveError(
                f"member too large: {e.name} in {archive} ({e.size} bytes > max_member_bytes {limits.max_member_bytes})"
            )
    total = sum(e.size for e in files)
    if total > limits.max_total_bytes:
        raise ArchiveError(f"archive too large: {archive} ({total} bytes > max_total_bytes {limits.max_total_bytes})")
    links = {e.name: e for e in entries if e.kind in LINK_KINDS}
    if links:
        for e in entries:
            parts = e.name.split("/")
            for i in range(1, len(parts)):
                via = links.get("/".join(parts[:i]))
                if via is not None:
                    raise ArchiveError(
                        f"unsafe member {e.name!r} in {archive}: its path goes through the link {via.name} -> {via.target}"
                    )
    return sorted(entries, key=lambda e: e.name)


def skip_reason(entry: Entry) -> str:
    """`<kind> not followed: -> target (...)` for links; a short text for special files."""
    if entry.kind in LINK_KINDS:
        where = "escaping the archive" if link_escapes(entry) else "inside the archive"
        return f"{entry.kind} not followed: -> {entry.target or '?'} ({where})"
    return "special file: not a regular file"


class Budget:
    """Counts real decompressed bytes against the limits."""

    def __init__(self, limits: Limits, archive: str | Path):
        self.limits, self.archive, self.total = limits, archive, 0

    def read_all(self, fh, name: str) -> bytes:
        """Read a file object to the end in chunks, refusing to go past the limits."""
        chunks, size = [], 0
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            self.total += len(chunk)
            if size > self.limits.max_member_bytes:
                raise ArchiveError(
                    f"member too large while decompressing: {name} in {self.archive} "
                    f"(> max_member_bytes {self.limits.max_member_bytes}; the archive under-declares its size)"
                )
            if self.total > self.limits.max_total_bytes:
                raise ArchiveError(
                    f"archive too large while decompressing: {self.archive} (> max_total_bytes {self.limits.max_total_bytes})"
                )
            chunks.append(chunk)
        return b"".join(chunks)


# ----------------------------------------------------------------------------- readers


class Reader:
    """Base class: `entries()` lists the archive, `read_files(files)` yields them in the given order."""

    def __init__(self, path: Path, limits: Limits):
        self.path, self.limits = path, limits

    def entries(self) -> list[Entry]:
        raise NotImplementedError

    def read_files(self, files: list[Entry]) -> Iterator[Member]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (open files, temporary folders)."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
