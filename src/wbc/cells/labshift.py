"""Images as another lab would hand them over: tight crops, low resolution, JPEG, another white balance.

The unseen labs a PBC-trained model meets differ from PBC in ways a single image shows: crops cut
tight around the white cell (no red cells left to measure the scale), photos of 80-120 px a side,
strong JPEG compression, another camera's white balance. Each is one function of an HxWx3 uint8
RGB image and a numpy Generator (the random draw), so that

- `wbc.dataset.stress` builds the stress sets from PBC's test split (evaluation only, never trained on),
- `wbc.dataset.pack` builds the training "lab views" from the train split: each train image also
  goes through `lab_view` and then through the SAME crop as every input (`wbc.cells.cellcrop`),
  so whichever crop path (`rbc`, the `cell` fallback, the `centre` fallback) such an image takes
  in `wbc predict` also occurs in training.

Nothing here depends on a dataset's pixel size: crops are relative to the cell found
(`wbc.cells.cellcrop.cell_box`), resolutions are the image's shorter side.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from wbc.cells.cellcrop import cell_box, square_around

#: The stress kinds, in report order (`degrade`).
KINDS = ("tight", "lowres", "jpeg", "white_balance", "combined")


@dataclass(frozen=True)
class Ranges:
    """The ranges the random draws come from (uniform)."""

    #: tight crop side / cell side (1.0: the cell's box itself, grown by cellcrop's margin)
    tight: tuple[float, float] = (1.05, 1.3)
    #: shorter side in pixels after downscaling
    side: tuple[int, int] = (80, 120)
    #: JPEG quality
    quality: tuple[int, int] = (15, 35)
    #: per-channel gain, log-uniform in [1 / g, g] (another white balance / lamp)
    gain: float = 1.25


#: The stress sets' ranges (the issue's: tight crops, 80-120 px, JPEG, other white balance).
STRESS = Ranges()
#: The training views' ranges: wider, so the test ranges lie inside what training saw.
TRAINING = Ranges(tight=(0.95, 1.35), side=(48, 160), quality=(15, 90), gain=1.3)


def tight_crop(rgb: np.ndarray, rng: np.random.Generator, ranges: Ranges = STRESS) -> np.ndarray:
    """The square around the white cell, `ranges.tight` times the cell's side: the cell fills the
    frame, no red cell left to measure. The image unchanged when no cell is found."""
    box = cell_box(rgb)
    if box is None:
        return rgb
    cx, cy, side = box
    return np.ascontiguousarray(square_around(rgb, cx, cy, side * rng.uniform(*ranges.tight)))


def downscale(rgb: np.ndarray, rng: np.random.Generator, ranges: Ranges = STRESS) -> np.ndarray:
    """The image resized (area interpolation) so its shorter side is drawn from `ranges.side`
    (never enlarged)."""
    h, w = rgb.shape[:2]
    target = int(rng.integers(ranges.side[0], ranges.side[1] + 1))
    scale = target / min(h, w)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    """The image encoded as JPEG at `quality` (4:2:0, as cameras do)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _quality(rng: np.random.Generator, ranges: Ranges) -> int:
    return int(rng.integers(ranges.quality[0], ranges.quality[1] + 1))


def jpeg(rgb: np.ndarray, rng: np.random.Generator, ranges: Ranges = STRESS) -> np.ndarray:
    """The image through JPEG at a quality drawn from `ranges.quality`."""
    data = np.frombuffer(jpeg_bytes(rgb, _quality(rng, ranges)), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def white_balance(rgb: np.ndarray, rng: np.random.Generator, ranges: Ranges = STRESS) -> np.ndarray:
    """Each channel multiplied by a gain drawn log-uniformly from [1 / g, g], the gains then scaled so
    the brightest gain is 1 where the image's white would clip (another camera's white balance)."""
    log_g = np.log(ranges.gain)
    gains = np.exp(rng.uniform(-log_g, log_g, 3))
    gains /= max(1.0, float(gains.max()))
    return np.clip(rgb.astype(np.float32) * gains[None, None, :], 0, 255).round().astype(np.uint8)


def steps(kind: str) -> tuple:
    """The steps of one stress kind of `KINDS`, in order. `tight` = a tight crop downscaled into
    `ranges.side` (the small crops of a lab whose crops the cell fills); `combined` = tight crop,
    downscale, white balance and JPEG together."""
    table = {"tight": (tight_crop, downscale), "lowres": (downscale,), "jpeg": (jpeg,),
             "white_balance": (white_balance,), "combined": (tight_crop, downscale, white_balance, jpeg)}
    if kind not in table:
        raise ValueError(f"unknown stress kind {kind!r}; valid: {', '.join(KINDS)}")
    return table[kind]


def degrade(rgb: np.ndarray, kind: str, rng: np.random.Generator, ranges: Ranges = STRESS) -> np.ndarray:
    """An image through the steps of one stress kind."""
    for step in steps(kind):
        rgb = step(rgb, rng, ranges)
    return rgb


def degrade_encoded(rgb: np.ndarray, kind: str, rng: np.random.Generator, ranges: Ranges = STRESS,
                    ) -> tuple[bytes, str]:
    """(file bytes, suffix) of `degrade`: where the last step is JPEG, the bytes that step makes
    (".jpg"), else the PNG of the result (".png"). Decoding the bytes gives `degrade`'s image."""
    todo = steps(kind)
    if todo[-1] is jpeg:
        for step in todo[:-1]:
            rgb = step(rgb, rng, ranges)
        return jpeg_bytes(rgb, _quality(rng, ranges)), ".jpg"
    ok, buf = cv2.imencode(".png", cv2.cvtColor(degrade(rgb, kind, rng, ranges), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes(), ".png"


def lab_view(rgb: np.ndarray, rng: np.random.Generator, ranges: Ranges = TRAINING) -> np.ndarray:
    """A training view of an image as another lab might hand it over: with probability 1/2 a tight
    crop, with probability 2/3 a downscale, with probability 1/3 JPEG (colour and white balance are
    the batch augmentation's job, `wbc.learn.augment`)."""
    tight, small, compress = rng.random(3)
    out = tight_crop(rgb, rng, ranges) if tight < 0.5 else rgb
    out = downscale(out, rng, ranges) if small < 2.0 / 3.0 else out
    return jpeg(out, rng, ranges) if compress < 1.0 / 3.0 else out
