"""Images from files, folders and zip archives, read safely (for `wbc predict` and other commands).

- `collect_inputs(paths, limits)`: files, folders (recursive, image suffixes and `.zip` archives)
  and zip archives -> a list of `InputItem` (zip members are named `archive.zip:member`). An
  archive is listed with the ingest path's checks (`wbc.data.archives`: unsafe names such as
  `../x.png`, duplicates, declared member and total sizes, links) plus a member count limit;
  a refused archive becomes ONE item with the reason. Nested archives are not opened: they are
  listed as items with an error.
- `iter_images(items, limits)`: (item, 8-bit RGB PIL image or None, error) in order. Archive
  members are streamed by the ingest readers (real decompressed bytes capped by
  `max_member_bytes`, zip CRCs checked); plain files are capped by `max_member_bytes` too; every
  image goes through `wbc.data.store.decode_image` with the decompression-bomb guard `max_pixels`.
- `read_items(items, size, limits)`: the same, as the packing path's uint8 (3, S, S) arrays.

Nothing is fatal per image: an unreadable input gets an error text and the run goes on.
Limits come from the `ingest` section of params.yaml when the file is there, else the defaults
(`InputLimits`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wbc.data.archives import FILE, Entry, Limits, open_reader, validate_entries
from wbc.core.errors import ArchiveError
from wbc.core.params import load_params
from wbc.dataset.pack import square_resize
from wbc.data.store import DEFAULT_MAX_PIXELS, BadImage, decode_image

#: File suffixes picked up inside folders and zip archives (explicit file arguments are always tried).
IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
#: Member suffixes of archives inside an archive: listed as errors, never opened.
ARCHIVE_SUFFIXES = (".zip", ".rar", ".7z", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".tbz2", ".txz", ".zst")
#: Default cap on the number of entries of one archive.
DEFAULT_MAX_MEMBERS = 100_000
PARAMS_FILE = "params.yaml"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputLimits:
    """What untrusted inputs may cost: the archive limits of ingest, the member count, the pixels."""

    archive: Limits = field(default_factory=Limits)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_mapping(cls, ingest: Mapping[str, Any]) -> InputLimits:
        """From the params `ingest` mapping (missing keys take the defaults)."""
        return cls(archive=Limits.coerce(ingest),
                   max_pixels=int(ingest.get("max_pixels") or DEFAULT_MAX_PIXELS),
                   max_members=int(ingest.get("max_members") or DEFAULT_MAX_MEMBERS))

    @classmethod
    def from_params(cls, path: str | Path = PARAMS_FILE) -> InputLimits:
        """The `ingest` section of `path` when the file exists, else the defaults."""
        if not Path(path).is_file():
            return cls()
        return cls.from_mapping(load_params(path).get("ingest") or {})

    @classmethod
    def coerce(cls, value: InputLimits | Mapping[str, Any] | None) -> InputLimits:
        """An InputLimits, an `ingest` mapping, or None (params.yaml in the working folder, else defaults)."""
        if isinstance(value, InputLimits):
            return value
        return cls.from_params() if value is None else cls.from_mapping(value)


@dataclass(frozen=True)
class InputItem:
    """One image to read: a file, or a member of a zip archive (`member` set)."""

    path: Path
    member: str | None = None
    error: str | None = None  # known unreadable before reading (missing path, refused archive)

    @property
    def name(self) -> str:
        """The name shown to users: the path, or `archive.zip:member`."""
        return f"{self.path}:{self.member}" if self.member is not None else str(self.path)


# ----------------------------------------------------------------------------- collecting


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith("._") and Path(base).suffix.lower() in IMAGE_SUFFIXES


def _is_archive_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return not base.startswith("._") and base.endswith(ARCHIVE_SUFFIXES)


def _listing(reader: Any, path: Path, limits: InputLimits) -> list[Entry]:
    """The reader's listing, validated as ingest does, plus the member count. Raises ArchiveError."""
    entries = reader.entries()
    if len(entries) > limits.max_members:
        raise ArchiveError(f"too many members in {path}: {len(entries)} > max_members {limits.max_members}")
    return validate_entries(entries, limits.archive, path)


def _zip_items(path: Path, limits: InputLimits) -> list[InputItem]:
    """Image members of a zip archive, sorted by name (`__MACOSX/`, `._*`, folders, other files skipped).

    Nested archives become items with an error; a refused archive becomes one item with the reason.
    """
    try:
        with open_reader(path, limits.archive) as reader:
            entries = _listing(reader, path, limits)
    except ArchiveError as exc:
        return [InputItem(path, error=f"unreadable archive: {exc}")]
    items = []
    for e in entries:
        if e.kind != FILE or e.name.startswith("__MACOSX/"):
            continue
        if _is_archive_name(e.name):
            items.append(InputItem(path, e.name, "nested archive: not opened (extract it and pass the folder)"))
        elif _is_image_name(e.name):
            items.append(InputItem(path, e.name))
    return items


def collect_inputs(paths: Sequence[str | Path], limits: InputLimits | Mapping[str, Any] | None = None) -> list[InputItem]:
    """Expand files, folders (recursive, sorted) and zip archives into a list of images.

    Inside folders only image suffixes (`IMAGE_SUFFIXES`) and `.zip` archives are taken; a path
    given explicitly is always tried. A missing path becomes an item with an error.
    """
    limits = InputLimits.coerce(limits)
    items: list[InputItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for sub in sorted(p for p in path.rglob("*") if p.is_file()):
                if sub.suffix.lower() == ".zip":
                    items.extend(_zip_items(sub, limits))
                elif _is_image_name(sub.name):
                    items.append(InputItem(sub))
        elif path.is_file():
            items.extend(_zip_items(path, limits) if path.suffix.lower() == ".zip" else [InputItem(path)])
        else:
            items.append(InputItem(path, error="no such file or folder"))
    return items


# ----------------------------------------------------------------------------- reading


def _read_file(path: Path, limits: InputLimits) -> bytes:
    """A plain file's bytes, read in chunks, refusing (ArchiveError) files larger than `max_member_bytes`."""
    cap = limits.archive.max_member_bytes
    chunks, size = [], 0
    with path.open("rb") as fh:
        declared = os.fstat(fh.fileno()).st_size
        if declared > cap:
            raise ArchiveError(f"file too large: {path} ({declared} bytes > max_member_bytes {cap})")
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise ArchiveError(f"file too large: {path} (> max_member_bytes {cap})")
            chunks.append(chunk)
    return b"".join(chunks)


def _archive_data(path: Path, items: list[InputItem], limits: InputLimits) -> Iterator[tuple[InputItem, bytes | None, str]]:
    """(item, bytes or None, error) for members of one archive, streamed by one reader.

    A member that fails while decompressing (over a limit, bad CRC) gets the error and reading
    resumes with the next one.
    """
    try:
        reader = open_reader(path, limits.archive)
    except ArchiveError as exc:
        yield from ((it, None, f"unreadable archive: {exc}") for it in items)
        return
    with reader:
        try:
            entries = {e.name: e for e in _listing(reader, path, limits) if e.kind == FILE}
        except ArchiveError as exc:
            yield from ((it, None, f"unreadable archive: {exc}") for it in items)
            return
        todo = list(items)
        while todo:
            members = reader.read_files([entries[it.member] for it in todo if it.member in entries])
            done = 0
            for it in todo:
                done += 1
                if it.member not in entries:
                    yield it, None, "unreadable: no such member in the archive"
                    continue
                try:
                    data, error = next(members).data, ""
                except ArchiveError as exc:
                    data, error = None, f"unreadable: {exc}"
                yield it, data, error
                if data is None:
                    break
            todo = todo[done:]


def iter_data(items: Iterable[InputItem], limits: InputLimits | Mapping[str, Any] | None = None,
              ) -> Iterator[tuple[InputItem, bytes | None, str]]:
    """Yield (item, bytes or None, error) in order; consecutive members of one archive share a reader."""
    limits = InputLimits.coerce(limits)
    for (path, in_archive), run in groupby(items, key=lambda it: (it.path, it.member is not None and not it.error)):
        if in_archive:
            yield from _archive_data(path, list(run), limits)
            continue
        for item in run:
            if item.error:
                yield item, None, item.error
                continue
            try:
                yield item, _read_file(item.path, limits), ""
            except (ArchiveError, OSError) as exc:
                yield item, None, f"unreadable: {exc}"


def iter_images(items: Iterable[InputItem], limits: InputLimits | Mapping[str, Any] | None = None,
                ) -> Iterator[tuple[InputItem, Image.Image | None, str]]:
    """Yield (item, 8-bit RGB PIL image or None, error) in order (`wbc.data.store.decode_image`, `max_pixels`)."""
    limits = InputLimits.coerce(limits)
    for item, data, error in iter_data(items, limits):
        if data is None:
            yield item, None, error
            continue
        try:
            image = decode_image(data, max_pixels=limits.max_pixels)
        except BadImage as exc:
            yield item, None, f"bad image: {exc}"
            continue
        yield item, image, ""


def read_items(items: Sequence[InputItem], size: int, limits: InputLimits | Mapping[str, Any] | None = None,
               ) -> Iterator[tuple[InputItem, np.ndarray | None, str]]:
    """Yield (item, uint8 (3, S, S) array or None, error) in order: `iter_images` then `square_resize`."""
    for item, image, error in iter_images(items, limits):
        yield item, (None if image is None else square_resize(image, size)), error
