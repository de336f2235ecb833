"""The image store and the one image-decoding path.

The store keeps the original member bytes concatenated in `shard-NNNNN.pack` files (~256 MiB
each), indexed by the manifest's `shard, offset, length`, so DVC tracks a few large files and
never thousands of small images.

`decode_image` is the only way the project turns bytes into pixels: full decode, checks against
decompression bombs and truncated data, conversion to 8-bit RGB. EXIF orientation is NOT applied:
pixels are kept as stored in the file (the datasets' crops are stored upright, and applying a tag
would make the same bytes decode differently in other tools).
"""
from __future__ import annotations

import io
import mmap
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from wbc.core.errors import WbcError

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_SHARD_BYTES = 256 * 2**20
SHARD_PATTERN = "shard-{:05d}.pack"

#: Raster formats accepted by decode_image: PIL only tries these plugins (JPEG also reads MPO).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM")
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_DIRECT_MODES = {"L", "1", "P", "CMYK", "YCbCr", "RGBX"}
_INT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class StoreError(WbcError):
    """The image store is missing a shard or an index points outside it."""


class BadImage(WbcError):
    """Bytes that do not decode to a usable image.

    `kind` is a short category (zero bytes, not an image, truncated, decompression bomb,
    unsupported mode, unsupported format, corrupt); `str(exc)` is `"<kind>: <detail>"`.
    `format` and `mode` are filled when the header could be read.
    """

    def __init__(self, kind: str, detail: str = "", format: str = "", mode: str = ""):
        self.kind, self.detail, self.format, self.mode = kind, detail, format, mode
        super().__init__(f"{kind}: {detail}" if detail else kind)

    @property
    def reason(self) -> str:
        """The manifest's `reason` text."""
        return str(self)


@dataclass(frozen=True)
class Decoded:
    """An image decoded by `decode`: the 8-bit RGB image plus what the file said."""

    image: Image.Image
    format: str
    mode: str
    width: int
    height: int


# ----------------------------------------------------------------------------- decoding


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None) -> Decoded:
    """Decode `data` fully to 8-bit RGB and report its original format and mode.

    `draft` (width, height): a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps it
    at least that large (libjpeg's scaled decoding, several times faster); other formats in full.

    Raises BadImage for zero bytes, non-images, formats outside IMAGE_FORMATS, images with
    more than `max_pixels` pixels (checked from the header, BEFORE the pixels are loaded; PIL's
    own DecompressionBombError/Warning are turned into BadImage too), truncated or corrupt data,
    and unsupported modes. EXIF orientation is not applied.
    """
    if not data:
        raise BadImage("zero bytes", "empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = _open(data, max_pixels)
        fmt, mode = im.format or "", im.mode
        try:
            if draft is not None and fmt == "JPEG":
                im.draft("RGB", draft)
            _load(im, fmt, mode)
            rgb = to_rgb(im)
        except BaseException:
            im.close()
            raise
    if rgb is not im:
        im.close()
    return Decoded(rgb, fmt, mode, rgb.width, rgb.height)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None,
                 ) -> Image.Image:
    """The one decoding path: `data` -> 8-bit RGB PIL image (see `decode`). Raises BadImage."""
    return decode(data, max_pixels, draft).image


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Image.open restricted to IMAGE_FORMATS, with the pixel-count check before any decoding."""
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError as exc:
        raise BadImage("not an image", f"not a recognised image file ({len(data)} bytes)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("decompression bomb", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001  plugins raise many types on garbage headers
        raise _failure(exc, "unreadable header: ") from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise BadImage("corrupt", f"invalid size {width}x{height}", im.format or "", im.mode)
    if width * height > max_pixels:
        im.close()
        raise BadImage("decompression bomb", f"{width}x{height} pixels > max_pixels {max_pixels}", im.format or "", im.mode)
    return im


def _load(im: Image.Image, fmt: str, mode: str) -> None:
    """Decode every pixel; truncated files fail (ImageFile.LOAD_TRUNCATED_IMAGES forced off)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("decompression bomb", str(exc), fmt, mode) from exc
    except Exception as exc:  # noqa: BLE001  OSError, SyntaxError, ValueError, struct.error, ...
        raise _failure(exc, "", fmt, mode) from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _failure(exc: Exception, prefix: str, fmt: str = "", mode: str = "") -> BadImage:
    """A BadImage for a PIL exception: `truncated` when the data ends early, else `corrupt`."""
    text = f"{type(exc).__name__}: {exc}"
    kind = "truncated" if "truncated" in text.lower() or isinstance(exc, EOFError) else "corrupt"
    return BadImage(kind, prefix + text, fmt, mode)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image to 8-bit RGB.

    Alpha is composited on white; 16-bit integers are scaled (v / 257), not clipped; mode `I`
    is scaled the same way when its values fit 0..65535, else stretched min..max; mode `F` is
    scaled x255 when it fits 0..1, else stretched min..max. Other modes raise BadImage.
    An image already in RGB is returned as is (not copied).
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" and "transparency" in im.info:
        return _on_white(im.convert("RGBA"))
    if mode == "PA":
        return _on_white(im.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _on_white(im.convert("RGBA") if mode != "RGBA" else im)
    if mode in _DIRECT_MODES:
        return im.convert("RGB")
    if mode in _INT_MODES or mode == "F":
        return _grey_to_rgb(_scale_to_uint8(np.asarray(im), mode))
    raise BadImage("unsupported mode", f"PIL mode {mode!r} is not handled", im.format or "", mode)


def _on_white(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image on a white background."""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16/32-bit integer or float pixel values to 0..255 (see `to_rgb`)."""
    a = arr.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif mode != "F" and lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


# ----------------------------------------------------------------------------- store


class StoreWriter:
    """Append member bytes to `root/shard-NNNNN.pack` files of about `shard_bytes` each.

    Use as a context manager; `add(data)` returns `(shard, offset, length)`. A new shard starts
    when the current one would exceed `shard_bytes` (an item larger than that gets a shard of its
    own). Existing `shard-*.pack` files in `root` are removed first: a store is written whole.
    """

    def __init__(self, root: str | Path, shard_bytes: int = DEFAULT_SHARD_BYTES):
        if shard_bytes <= 0:
            raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
        self.root, self.shard_bytes = Path(root), int(shard_bytes)
        self.shard, self.size, self._fh = -1, 0, None

    def __enter__(self) -> StoreWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob("shard-*.pack"):
            old.unlink()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self.shard += 1
        self.size = 0
        self._fh = open(self.root / SHARD_PATTERN.format(self.shard), "wb")

    def add(self, data: bytes) -> tuple[int, int, int]:
        """Append `data`; return where it is: (shard, offset, length)."""
        if self._fh is None or (self.size > 0 and self.size + len(data) > self.shard_bytes):
            self._next_shard()
        offset = self.size
        self._fh.write(data)
        self.size += len(data)
        return self.shard, offset, len(data)

    def close(self) -> None:
        """Flush and close the current shard."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class ImageStore:
    """Read access to a store written by StoreWriter (shards memory-mapped on first use).

    Picklable (the maps are reopened in the receiving process), so loaders can be sent to workers.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise StoreError(f"image store not found: {self.root}")
        self._maps: dict[int, mmap.mmap] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])

    def _map(self, shard: int) -> mmap.mmap:
        with self._lock:
            if shard not in self._maps:
                path = self.root / SHARD_PATTERN.format(shard)
                if not path.is_file():
                    raise StoreError(f"missing store shard: {path}")
                with open(path, "rb") as fh:
                    if fh.seek(0, 2) == 0:
                        raise StoreError(f"empty store shard: {path}")
                    self._maps[shard] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            return self._maps[shard]

    def read(self, shard: int, offset: int, length: int) -> bytes:
        """The bytes stored at (shard, offset, length)."""
        shard, offset, length = int(shard), int(offset), int(length)
        if shard < 0:
            raise StoreError("this row is not in the image store (shard -1)")
        if length == 0:
            return b""
        mm = self._map(shard)
        if offset < 0 or length < 0 or offset + length > len(mm):
            raise StoreError(f"store index out of range: shard {shard}, offset {offset}, length {length}")
        return mm[offset : offset + length]

    def read_row(self, row: Mapping[str, Any] | Any) -> bytes:
        """The bytes of a manifest row (dict, pandas Series or namedtuple with shard/offset/length)."""
        try:
            return self.read(_field(row, "shard"), _field(row, "offset"), _field(row, "length"))
        except StoreError as exc:
            raise StoreError(f"{_field(row, 'id', 'row')}: {exc}") from exc

    def load_rgb(self, row: Mapping[str, Any] | Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The decoded 8-bit RGB image of a manifest row (decode_image)."""
        return decode_image(self.read_row(row), max_pixels)

    def close(self) -> None:
        """Unmap every shard."""
        with self._lock:
            for mm in self._maps.values():
                mm.close()
            self._maps.clear()


def _field(row: Any, key: str, default: Any = None) -> Any:
    """row[key] for mappings and pandas rows, row.key for namedtuples."""
    if hasattr(row, "get"):
        value = row.get(key, default)
    else:
        value = getattr(row, key, default)
    if value is None and default is None:
        raise StoreError(f"manifest row has no {key!r} field")
    return value
