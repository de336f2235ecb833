"""How a synthetic picture is taken: the camera of each source and the view of one picture.

A `Camera` holds a source's crop size, magnification and colour/quality traits; a `View` (shift,
zoom, focus blur, exposure, JPEG quality) crops one picture out of a rendered field
(`take_view`), and `encode` writes it in the archive's file format.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from wbc.core.errors import ConfigError


@dataclass(frozen=True)
class Camera:
    """How a source's pictures are taken: crop size, magnification and colour/quality traits."""

    size: tuple[int, int]                  # output (width, height) in px
    px_per_um: float                       # output pixels per micrometre
    native: float                          # native resolution / output resolution (< 1: upscaled)
    background: tuple[float, float, float]  # light through an empty slide (RGB, 0-255)
    stain: float                           # global optical-density multiplier (contrast)
    cast: tuple[float, float, float]       # per-channel optical-density multipliers (colour balance)
    blur: float                            # optical blur (Gaussian radius, output px)
    noise: float                           # sensor noise (sd, 0-255 units)
    quality: int                           # JPEG quality of the originals


PBC_CAMERA = Camera((360, 363), 10.0, 1.0, (255, 231, 204), 1.0, (1.0, 1.0, 1.0), 0.0, 1.2, 88)
RAABIN_CAMERA = Camera((575, 575), 14.5, 0.7, (236, 226, 238), 1.0, (1.0, 1.05, 0.95), 0.0, 1.8, 92)
TESTB_CAMERA = Camera((575, 575), 14.5, 0.4, (240, 236, 206), 0.78, (0.8, 1.15, 0.95), 2.0, 2.0, 84)


@dataclass(frozen=True)
class View:
    """How one picture of a field is taken (near-duplicates differ in these)."""

    dx: float = 0.0          # shift, fraction of the crop width
    dy: float = 0.0
    zoom: float = 1.0
    blur: float = 0.0        # extra focus blur (output px)
    exposure: float = 1.0
    quality: int | None = None   # JPEG quality; None = the camera's

    def describe(self) -> str:
        return (f"shift=({self.dx:+.3f},{self.dy:+.3f}) zoom={self.zoom:.3f} blur={self.blur:.2f} "
                f"exposure={self.exposure:.3f} quality={self.quality}")


@functools.lru_cache(maxsize=8)
def _noise_tile(seed: int, width: int, height: int) -> np.ndarray:
    """Sensor-noise tile (2x the crop, sd 1), shared by the pictures of one camera size."""
    rng = np.random.default_rng([int(seed), 5_000_000, width, height])
    return rng.standard_normal((2 * height, 2 * width, 3), dtype=np.float32)


def take_view(field_img: Image.Image, cam: Camera, view: View, rng: np.random.Generator, seed: int = 0) -> Image.Image:
    """Crop/zoom a rendered field to the camera's output size, then blur, expose and add noise."""
    W, H = cam.size
    k = cam.native / view.zoom
    cx = field_img.width / 2 + view.dx * W * cam.native
    cy = field_img.height / 2 + view.dy * H * cam.native
    box = (cx - k * W / 2, cy - k * H / 2, cx + k * W / 2, cy + k * H / 2)
    if cam.blur > 0:   # optical blur of the camera, at its native resolution
        field_img = field_img.filter(ImageFilter.GaussianBlur(cam.blur * cam.native))
    if box == (0, 0, W, H) and field_img.size == (W, H):
        img = field_img
    else:
        img = field_img.resize((W, H), Image.Resampling.BICUBIC, box=box)
    if view.blur > 0:  # focus blur of this picture
        img = img.filter(ImageFilter.GaussianBlur(view.blur))
    arr = np.asarray(img, dtype=np.float32)
    if view.exposure != 1.0:
        arr = arr * view.exposure
    oy, ox = int(rng.integers(H)), int(rng.integers(W))
    arr = arr + _noise_tile(seed, W, H)[oy:oy + H, ox:ox + W] * cam.noise
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, mode: str = "RGB", quality: int = 90) -> bytes:
    """Encode a picture as JPEG (RGB, L, CMYK) or PNG (P, RGBA, I;16)."""
    buf = io.BytesIO()
    if mode in ("RGB", "L", "CMYK"):
        img.convert(mode).save(buf, format="JPEG", quality=quality)
    elif mode == "P":
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG")
    elif mode == "RGBA":
        rgba = img.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(buf, format="PNG")
    elif mode == "I;16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey.astype("<u2")).save(buf, format="PNG")
    else:
        raise ConfigError(f"unsupported synthetic image mode {mode!r}")
    return buf.getvalue()
