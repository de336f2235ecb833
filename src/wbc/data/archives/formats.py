"""The in-process formats: zip (zipfile), tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz; tarfile) and plain
folders of files (walked without following links)."""
from __future__ import annotations

import lzma
import os
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from wbc.core.errors import ArchiveError
from wbc.data.archives.members import (CHUNK, DIR, FILE, HARDLINK, OTHER, SYMLINK, Budget, Entry, Limits, Member,
                                       Reader, clean_name)


class ZipReader(Reader):
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
        budget = Budget(self.limits, self.path)
        for e in files:
            try:
                with self.zf.open(self.infos[e.name]) as fh:
                    data = budget.read_all(fh, e.name)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as exc:
                raise ArchiveError(f"corrupt data in {self.path}: {e.name} ({exc})") from exc
            yield Member(e.name, len(data), data)

    def close(self) -> None:
        self.zf.close()


class TarReader(Reader):
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
            while self.tf.fileobj.read(CHUNK):
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

    def _read(self, name: str, budget: Budget) -> bytes:
        try:
            fh = self.tf.extractfile(self.infos[name])
            assert fh is not None
            with fh:
                return budget.read_all(fh, name)
        except self._ERRORS as exc:
            raise ArchiveError(f"corrupt data in {self.path}: {name} ({exc})") from exc

    def read_files(self, files: list[Entry]) -> Iterator[Member]:
        budget = Budget(self.limits, self.path)
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


class DirReader(Reader):
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
        budget = Budget(self.limits, self.path)
        for e in files:
            fd = os.open(self.path / e.name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as fh:
                data = budget.read_all(fh, e.name)
            yield Member(e.name, len(data), data)
