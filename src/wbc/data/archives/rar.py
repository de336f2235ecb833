"""RAR archives: the listing is parsed in Python by `rarfile`; the data is extracted ONCE by the `unar`
tool (solid archives cannot be read member by member without re-decompressing from the start)
into a private temporary folder, asking it for the regular files only (by index), then that
folder is walked without following links."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import rarfile

from wbc.core.errors import ArchiveError
from wbc.data.archives.members import DIR, FILE, HARDLINK, SYMLINK, Budget, Entry, Limits, Member, Reader, clean_name


class RarReader(Reader):
    """RAR archives: listing by rarfile (pure Python), data by ONE `unar` run into a private folder."""

    def __init__(self, path: Path, limits: Limits):
        super().__init__(path, limits)
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
        proc = run_tool(["lsar", "-j", str(archive)], self.path)
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
            run_tool(cmd, self.path, fsize=self.limits.max_member_bytes)
            found = walk_regular_files(out, self.path)
            expected = {e.name for e in files}
            if set(found) != expected:
                missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
                raise ArchiveError(f"unar extracted unexpected files from {self.path}: missing {missing[:5]}, extra {extra[:5]}")
            budget = Budget(self.limits, self.path)
            for e in files:
                with open(found[e.name], "rb") as fh:
                    data = budget.read_all(fh, e.name)
                if len(data) != e.size:
                    raise ArchiveError(f"size mismatch for {e.name} in {self.path}: {len(data)} != declared {e.size}")
                yield Member(e.name, len(data), data)

    def close(self) -> None:
        self.rf.close()


def run_tool(cmd: list[str], archive: Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    """Run an archive tool; a missing tool or a failure becomes an ArchiveError.

    `fsize` caps the size of any file the tool writes (RLIMIT_FSIZE): the real-bytes guard
    for members whose declared size is a lie.
    """

    def limit() -> None:
        import resource  # POSIX only (the limit is applied only there)

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


def walk_regular_files(root: Path, archive: Path) -> dict[str, Path]:
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
