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
"""
from __future__ import annotations

import json
import lzma
import os
import posixpath
import re
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wbc.core.errors import ArchiveError

FILE, DIR, SYMLINK, HARDLINK, OTHER = "file", "dir", "symlink", "hardlink", "other"
LINK_KINDS = (SYMLINK, HARDLINK)
_CHUNK = 1 << 20
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
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


def _skip_reason(entry: Entry) -> str:
    """`<kind> not followed: -> target (...)` for links; a short text for special files."""
    if entry.kind in LINK_KINDS:
        where = "escaping the archive" if link_escapes(entry) else "inside the archive"
        return f"{entry.kind} not followed: -> {entry.target or '?'} ({where})"
    return "special file: not a regular file"


class _Budget:
    """Counts real decompressed bytes against the limits."""

    def __init__(self, limits: Limits, archive: str | Path):
        self.limits, self.archive, self.total = limits, archive, 0

    def read_all(self, fh, name: str) -> bytes:
        """Read a file object to the end in chunks, refusing to go past the limits."""
        chunks, size = [], 0
        while True:
            chunk = fh.read(_CHUNK)
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


class _Reader:
    """Base class: `entries()` lists the archive, `read_files(files)` yields them in the given order."""

    def __init__(self, path: Path, limits: Limits):
        self.path, self.limits = path, limits

    def entries(self) -> list[Entry]:
        raise NotImplementedError

    def read_files(self, files: list[Entry]) -> Iterator[Member]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (open files, temporary folders)."""

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ZipReader(_Reader):
    """Zip archives, streamed in-process with zipfile (CRC checked by zipfile at the end of a member)."""

    def __init__(self, path: Path, limits: Limits):
        super().__init__(path, limits)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ArchiveError(f"corrupt or unreadable zip archive: {path} ({exc})") from exc
        self.infos: dict[str, zipfile.ZipInfo] = {}

    def entries(self) -> list[Entry]:
        out = []
        for info in self.zf.infolist():
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive is password-protected: {self.path}")
            name = clean_name(info.filename, self.path)
            mode = info.external_attr >> 16
            if info.is_dir() or stat.S_ISDIR(mode):
                out.append(Entry(name, 0, DIR))
            elif stat.S_ISLNK(mode):
                try:
                    with self.zf.open(info) as fh:
                        target = fh.read(4096).decode("utf-8", "replace")
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                    raise ArchiveError(f"corrupt link member in {self.path}: {name} ({exc})") from exc
                out.append(Entry(name, info.file_size, SYMLINK, target))
            elif mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                out.append(Entry(name, info.file_size, OTHER))
            else:
                if name in self.infos:
                    raise ArchiveError(f"duplicate member {name!r} in {self.path}")
                self.infos[name] = info
                out.append(Entry(name, info.file_size, FILE))
        return out

    def read_files(self, files: list[Entry]) -> Iterator[Member]:
        budget = _Budget(self.limits, self.path)
        for e in files:
            try:
                with self.zf.open(self.infos[e.name]) as fh:
                    data = budget.read_all(fh, e.name)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as exc:
                raise ArchiveError(f"corrupt data in {self.path}: {e.name} ({exc})") from exc
            yield Member(e.name, len(data), data)

    def close(self) -> None:
        self.zf.close()


class _TarReader(_Reader):
    """Tar archives (any compression). Read in archive order; spooled to a temporary folder when that
    order is not the sorted order (a compressed stream cannot seek backwards cheaply)."""

    _ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)

    def __init__(self, path: Path, limits: Limits):
        super().__init__(path, limits)
        try:
            self.tf = tarfile.open(path, "r:*")
        except self._ERRORS as exc:
            raise ArchiveError(f"corrupt or unreadable tar archive: {path} ({exc})") from exc
        self.infos: dict[str, tarfile.TarInfo] = {}

    def entries(self) -> list[Entry]:
        try:
            members = self.tf.getmembers()
            # Read the compressed stream to its end: gzip checks its CRC only there.
            while self.tf.fileobj.read(_CHUNK):
                pass
        except self._ERRORS as exc:
            raise ArchiveError(f"corrupt tar archive: {self.path} ({exc})") from exc
        out = []
        for info in members:
            name = clean_name(info.name, self.path)
            if info.isdir():
                out.append(Entry(name, 0, DIR))
            elif info.issym():
                out.append(Entry(name, 0, SYMLINK, info.linkname))
            elif info.islnk():
                out.append(Entry(name, 0, HARDLINK, info.linkname))
            elif info.isreg():
                if name in self.infos:
                    raise ArchiveError(f"duplicate member {name!r} in {self.path}")
                self.infos[name] = info
                out.append(Entry(name, info.size, FILE))
            else:
                out.append(Entry(name, 0, OTHER))
        return out

    def _read(self, name: str, budget: _Budget) -> bytes:
        try:
            fh = self.tf.extractfile(self.infos[name])
            assert fh is not None
            with fh:
                return budget.read_all(fh, name)
        except self._ERRORS as exc:
            raise ArchiveError(f"corrupt data in {self.path}: {name} ({exc})") from exc

    def read_files(self, files: list[Entry]) -> Iterator[Member]:
        budget = _Budget(self.limits, self.path)
        by_offset = sorted(files, key=lambda e: self.infos[e.name].offset_data)
        if [e.name for e in by_offset] == [e.name for e in files]:
            for e in files:
                data = self._read(e.name, budget)
                yield Member(e.name, len(data), data)
            return
        with tempfile.TemporaryDirectory(prefix="wbc-tar-") as spool:
            index = {}
            for i, e in enumerate(by_offset):
                index[e.name] = Path(spool, f"{i:09d}")
                index[e.name].write_bytes(self._read(e.name, budget))
            for e in files:
                data = index[e.name].read_bytes()
                index[e.name].unlink()
                yield Member(e.name, len(data), data)

    def close(self) -> None:
        self.tf.close()


class _RarReader(_Reader):
    """RAR archives: listing by rarfile (pure Python), data by ONE `unar` run into a private folder."""

    def __init__(self, path: Path, limits: Limits):
        super().__init__(path, limits)
        import rarfile

        self.rarfile = rarfile
        try:
            self.rf = rarfile.RarFile(str(path))
        except rarfile.PasswordRequired as exc:
            raise ArchiveError(f"archive is password-protected: {path}") from exc
        except (rarfile.Error, OSError) as exc:
            raise ArchiveError(f"corrupt or unreadable rar archive: {path} ({exc})") from exc
        if self.rf.needs_password():
            raise ArchiveError(f"archive is password-protected: {path}")

    def _kind(self, info) -> tuple[str, str]:
        redir = getattr(info, "file_redir", None)
        if redir:
            rtype, _flags, target = redir
            hard = rtype in (self.rarfile.RAR5_XREDIR_HARD_LINK, self.rarfile.RAR5_XREDIR_FILE_COPY)
            return (HARDLINK if hard else SYMLINK), target or ""
        if info.is_dir():
            return DIR, ""
        if info.is_symlink():  # RAR3 unix symlink: target stored as data, treated as unknown
            return SYMLINK, ""
        return FILE, ""

    def entries(self) -> list[Entry]:
        out = []
        for info in self.rf.infolist():
            if info.needs_password():
                raise ArchiveError(f"archive is password-protected: {self.path}")
            name = clean_name(info.filename, self.path)
            kind, target = self._kind(info)
            out.append(Entry(name, info.file_size if kind == FILE else 0, kind, target))
        return out

    def _tool_indexes(self, archive: Path, files: list[Entry]) -> list[int]:
        """Indexes of `files` in the unar tool's own listing (lsar), cross-checked with rarfile's."""
        proc = _run(["lsar", "-j", str(archive)], self.path)
        try:
            listing = json.loads(proc.stdout)["lsarContents"]
        except (ValueError, KeyError) as exc:
            raise ArchiveError(f"cannot parse the lsar listing of {self.path} ({exc})") from exc
        tool = {}
        for item in listing:
            if item.get("XADIsDirectory") or item.get("XADIsLink") or item.get("XADIsHardLink"):
                continue
            tool[clean_name(item["XADFileName"], self.path)] = (int(item["XADIndex"]), int(item.get("XADFileSize", -1)))
        indexes = []
        for e in files:
            if e.name not in tool or tool[e.name][1] not in (e.size, -1):
                raise ArchiveError(f"rarfile and lsar disagree about member {e.name!r} of {self.path}")
            indexes.append(tool[e.name][0])
        return indexes

    def read_files(self, files: list[Entry]) -> Iterator[Member]:
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="wbc-rar-") as tmp:
            # A neutral name: the tools guess multi-volume sets from names like `rar5-x.rar` + `rar3-x.rar`.
            archive = Path(tmp, "archive.rar")
            archive.symlink_to(self.path.resolve())
            indexes = self._tool_indexes(archive, files)
            out = Path(tmp, "x")
            out.mkdir()
            cmd = ["unar", "-q", "-f", "-D", "-k", "skip", "-o", str(out), "-i", str(archive), *map(str, indexes)]
            _run(cmd, self.path, fsize=self.limits.max_member_bytes)
            found = _walk_regular_files(out, self.path)
            expected = {e.name for e in files}
            if set(found) != expected:
                missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
                raise ArchiveError(f"unar extracted unexpected files from {self.path}: missing {missing[:5]}, extra {extra[:5]}")
            budget = _Budget(self.limits, self.path)
            for e in files:
                with open(found[e.name], "rb") as fh:
                    data = budget.read_all(fh, e.name)
                if len(data) != e.size:
                    raise ArchiveError(f"size mismatch for {e.name} in {self.path}: {len(data)} != declared {e.size}")
                yield Member(e.name, len(data), data)

    def close(self) -> None:
        self.rf.close()


class _DirReader(_Reader):
    """A plain folder of files (a user's own data): walked without following links."""

    def entries(self) -> list[Entry]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
            rel_dir = Path(dirpath).relative_to(self.path).as_posix()
            for fname in dirnames + filenames:
                full = Path(dirpath, fname)
                name = fname if rel_dir == "." else f"{rel_dir}/{fname}"
                st = full.lstat()
                if stat.S_ISLNK(st.st_mode):
                    out.append(Entry(name, 0, SYMLINK, os.readlink(full)))
                elif stat.S_ISDIR(st.st_mode):
                    out.append(Entry(name, 0, DIR))
                elif stat.S_ISREG(st.st_mode):
                    out.append(Entry(name, st.st_size, FILE))
                else:
                    out.append(Entry(name, 0, OTHER))
        return out

    def read_files(self, files: list[Entry]) -> Iterator[Member]:
        budget = _Budget(self.limits, self.path)
        for e in files:
            fd = os.open(self.path / e.name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as fh:
                data = budget.read_all(fh, e.name)
            yield Member(e.name, len(data), data)


# ----------------------------------------------------------------------------- helpers


def _run(cmd: list[str], archive: Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    """Run an archive tool; a missing tool or a failure becomes an ArchiveError.

    `fsize` caps the size of any file the tool writes (RLIMIT_FSIZE): the real-bytes guard
    for members whose declared size is a lie.
    """

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
            preexec_fn=limit if fsize is not None and os.name == "posix" else None, check=False,
        )
    except FileNotFoundError as exc:
        raise ArchiveError(f"`{cmd[0]}` is needed to read {archive} (install the `unar` package)") from exc
    if proc.returncode != 0:
        detail = " ".join((proc.stderr + " " + proc.stdout).split())[-300:]
        raise ArchiveError(f"cannot extract {archive}: {cmd[0]} failed (exit {proc.returncode}): {detail}")
    return proc


def _walk_regular_files(root: Path, archive: Path) -> dict[str, Path]:
    """Map posix names to the regular files under `root`; any link or escaping path is an error."""
    real_root = os.path.realpath(root)
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for fname in dirnames + filenames:
            full = Path(dirpath, fname)
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise ArchiveError(f"extracting {archive} produced a link or special file: {fname!r}")
            if os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
                raise ArchiveError(f"extracting {archive} produced a path outside its folder: {fname!r}")
            if stat.S_ISREG(st.st_mode):
                found[full.relative_to(root).as_posix()] = full
    return found


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


_READERS = {"zip": _ZipReader, "tar": _TarReader, "rar": _RarReader, "dir": _DirReader}


def open_reader(path: str | Path, limits: Limits | Mapping[str, Any] | None = None) -> _Reader:
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
                on_skip(Skipped(e.name, e.kind, _skip_reason(e)))
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
                on_skip(Skipped(e.name, e.kind, _skip_reason(e)))
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
