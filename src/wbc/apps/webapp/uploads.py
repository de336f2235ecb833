"""Receiving an upload: a multipart/form-data body streamed to disk, file by file, with limits.

The body is parsed while it arrives (`python_multipart.MultipartParser`), so nothing is held in
memory and an upload over the limits is refused as soon as it crosses them: a declared
Content-Length over the byte cap is refused before reading anything; otherwise the file bytes
and the number of files are counted as the parts stream in. Each file lands in its own numbered
folder (`<folder>/<i>/<name>`), under its uploaded base name (no directories: `../x.png`
becomes `x.png`), so two uploads with the same name stay apart.
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

#: Allowance for the multipart framing on top of the file bytes: per request and per part.
BODY_OVERHEAD = 64 * 1024
PART_OVERHEAD = 4 * 1024
#: Longest stored file name, in UTF-8 bytes (file systems allow 255).
MAX_NAME_BYTES = 200


class UploadRejected(Exception):
    """An upload refused as a whole: HTTP `status` and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class SavedUpload:
    """One uploaded file: its name as uploaded (base name) and where it is stored."""

    name: str
    path: Path
    size: int = 0


def safe_name(raw: str, index: int) -> str:
    """The base name of an uploaded file name, printable, at most MAX_NAME_BYTES; a fallback when empty."""
    base = re.split(r"[\\/]", raw)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", ".."):
        return f"upload-{index + 1}"
    stem, dot, suffix = base.rpartition(".")
    if not dot or len(suffix) > 16:
        stem, suffix = base, ""
    while len((stem + dot + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem + (dot if suffix else "") + suffix


def megabytes(n: int) -> str:
    """A byte count as MB text for messages."""
    return f"{n / 2**20:.1f} MB"


class _PartWriter:
    """MultipartParser callbacks: every file part is written to its own file under `folder`."""

    def __init__(self, folder: Path, max_bytes: int, max_files: int) -> None:
        self.folder, self.max_bytes, self.max_files = folder, max_bytes, max_files
        self.saved: list[SavedUpload] = []
        self.file_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._out: IO[bytes] | None = None

    def callbacks(self) -> dict[str, Any]:
        """The callback mapping MultipartParser expects."""
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self.close}

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        """Open the part's file when the part is a file with a name (other fields are ignored)."""
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        if not filename:  # a form field, or an empty file input
            return
        if len(self.saved) >= self.max_files:
            raise UploadRejected(413, f"too many files: more than {self.max_files} in one upload "
                                      "(limit: --max-files or serve.max_files in params.yaml)")
        index = len(self.saved)
        name = safe_name(filename.decode("utf-8", "replace"), index)
        path = self.folder / str(index) / name
        path.parent.mkdir(parents=True)
        self._out = path.open("wb")
        self.saved.append(SavedUpload(name, path))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            return
        self.file_bytes += end - start
        if self.file_bytes > self.max_bytes:
            raise UploadRejected(413, too_large_message(self.max_bytes))
        self._out.write(data[start:end])
        self.saved[-1].size += end - start

    def close(self) -> None:
        """Close the file being written, if any."""
        if self._out is not None:
            self._out.close()
            self._out = None


def too_large_message(max_bytes: int) -> str:
    """The 413 message of an upload over the byte cap."""
    return (f"upload too large: more than {megabytes(max_bytes)} in total "
            "(limit: --max-upload-mb or serve.max_upload_mb in params.yaml)")


def _boundary(content_type: str | None) -> bytes:
    ctype, options = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadRejected(400, "expected a multipart/form-data upload of files (field `files`)")
    return options[b"boundary"]


async def receive_files(headers: Any, body: AsyncIterable[bytes], folder: Path, *,
                        max_bytes: int, max_files: int) -> list[SavedUpload]:
    """Stream a multipart body into `folder` -> the saved files, in upload order.

    Raises UploadRejected (413 over a limit, 400 malformed or without files); the caller removes
    `folder` then. `headers` is the request's header mapping, `body` its byte stream.
    """
    boundary = _boundary(headers.get("content-type"))
    body_cap = max_bytes + BODY_OVERHEAD + PART_OVERHEAD * max_files
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_cap:
        raise UploadRejected(413, too_large_message(max_bytes))
    writer = _PartWriter(folder, max_bytes, max_files)
    parser = MultipartParser(boundary, writer.callbacks())
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > body_cap:
                raise UploadRejected(413, too_large_message(max_bytes))
            parser.write(chunk)
        parser.finalize()
    except (FormParserError, MultipartParseError) as exc:
        raise UploadRejected(400, f"malformed upload: {exc}") from None
    finally:
        writer.close()
    if not writer.saved:
        raise UploadRejected(400, "no file in the upload")
    return writer.saved
