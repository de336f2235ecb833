"""Augmentation of uint8 training batches: stain and colour (`stain_augment`), flips and zoom (`augment`).

The stain augmentation (params `train.stain_augment`) runs in the training loader where each uint8
batch is read (`wbc.learn.packed.make_loader(transform=...)`, in the DataLoader workers when there
are), before the flips and zoom of `augment`; every
draw comes from a generator seeded per batch from the training seed, so a seed gives the same images.
`stain_augment(x, generator)` applies, per image:

1. stain jitter in haematoxylin-eosin optical-density space (Ruifrok & Johnston 2001 colour
   deconvolution): OD = -log((I + 1) / 256); concentrations C = OD M^-1 (rows of M: the H, E and
   residual stain vectors); each of H and E scaled by U(1 - STAIN_SCALE, 1 + STAIN_SCALE) and
   shifted by U(-STAIN_SHIFT, STAIN_SHIFT); back to RGB. With `white_balance` w > 0 (params
   `train.white_balance`), each RGB channel is also multiplied by its own gain exp(U(-w, w)) (the
   three lowered together so that none exceeds 1 and white does not clip), the camera's white
   balance and the lamp's colour: a gain g on I is the OD shift -log g, so it joins
   the offset. The whole jitter is one 3x3 affine map of OD per image (M^-1 diag(a) M, b M - log g),
   so it costs one matrix product per pixel;
2. brightness, contrast, saturation and hue (a rotation about the grey axis in YIQ space): one
   3x3 affine map of RGB per image; then gamma;
3. Gaussian blur (probability BLUR_P, sigma from BLUR_SIGMAS) and JPEG re-encoding (probability
   JPEG_P, quality in JPEG_QUALITY);
4. a random 90-degree rotation (k = 0..3).

The wider zoom range that goes with it is `WIDE_SCALE` (used by the trainer's rescale).
`strength` (params `train.stain_strength`, default 1) multiplies every colour range of steps 1-2
(stain scale and shift, brightness, contrast, saturation, hue, gamma; factors stay within
[1 - `MAX_FACTOR_CUT`, ...]): 2 is a "strong" colour augmentation for labs whose stain differs more.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

#: Ruifrok & Johnston's haematoxylin, eosin and DAB optical-density vectors (rows, normalised).
RJ_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
STAIN_SCALE, STAIN_SHIFT = 0.25, 0.05
BRIGHTNESS, CONTRAST, SATURATION, HUE, GAMMA = 0.2, 0.2, 0.25, 0.05, 0.25
BLUR_P, BLUR_SIGMAS = 0.3, (0.6, 1.2)
JPEG_P, JPEG_QUALITY = 0.3, (40, 95)
#: Zoom range used with stain augmentation (the default training range is 0.9-1.1).
WIDE_SCALE = (0.7, 1.4)
#: With `strength` > 1 a multiplicative factor 1 +- r never goes below 1 - MAX_FACTOR_CUT.
MAX_FACTOR_CUT = 0.9

#: log(I + 1) of every uint8 value (float32): the log of the OD transform as a table lookup.
_LOG1P_TABLE = np.log1p(np.arange(256, dtype=np.float64)).astype(np.float32).reshape(256, 1)
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def stain_matrix() -> np.ndarray:
    """The 3x3 stain matrix M (rows = unit OD vectors of H, E, and their cross product as residual)."""
    h, e = (RJ_STAINS[i] / np.linalg.norm(RJ_STAINS[i]) for i in (0, 1))
    r = np.cross(h, e)
    return np.stack([h, e, r / np.linalg.norm(r)])


def optical_density(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float OD -log((I + 1) / 256), same shape."""
    return x.to(torch.float32).add_(1.0).log_().neg_().add_(float(np.log(256.0)))


def concentrations(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> stain concentrations (B, 3, H, W): H, E, residual (C = OD M^-1)."""
    inv = torch.as_tensor(np.linalg.inv(stain_matrix()), dtype=torch.float32)
    return torch.einsum("bchw,cd->bdhw", optical_density(x), inv)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


def _factor(gen: torch.Generator, shape: tuple[int, ...], r: float, strength: float) -> torch.Tensor:
    """Factors uniform in 1 +- r x strength, the lower end at least 1 - MAX_FACTOR_CUT."""
    return _uniform(gen, shape, 1 - min(r * strength, MAX_FACTOR_CUT), 1 + r * strength)


def _stain_maps(b: int, gen: torch.Generator, strength: float = 1.0, white_balance: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image OD affine maps: (B, 3, 3) matrices A and (B, 3) offsets c with OD' = OD A + c; with
    `white_balance` w > 0 the offsets also hold -log g of per-channel gains g = exp(U(-w, w)) / max(1,
    largest gain), drawn after the stain draws (at 0 nothing is drawn: the other draws are unchanged)."""
    m = torch.as_tensor(stain_matrix())
    scale = torch.ones(b, 3, dtype=torch.float64)
    scale[:, :2] = _factor(gen, (b, 2), STAIN_SCALE, strength)
    shift = torch.zeros(b, 3, dtype=torch.float64)
    shift[:, :2] = _uniform(gen, (b, 2), -STAIN_SHIFT * strength, STAIN_SHIFT * strength)
    a = torch.linalg.inv(m) @ torch.diag_embed(scale) @ m
    offset = shift @ m
    if white_balance > 0:  # log gains, lowered together so that none exceeds 1 (white would clip)
        log_gain = _uniform(gen, (b, 3), -white_balance, white_balance)
        offset = offset - (log_gain - log_gain.amax(dim=1, keepdim=True).clamp(min=0.0))
    return a.float(), offset.float()


def _colour_maps(b: int, gen: torch.Generator, strength: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image brightness x saturation x hue matrices (B, 3, 3), contrast factors (B,), gammas (B,)."""
    yiq, iyiq = torch.as_tensor(_YIQ), torch.as_tensor(np.linalg.inv(_YIQ))
    bright = _factor(gen, (b,), BRIGHTNESS, strength)
    sat = _factor(gen, (b,), SATURATION, strength)
    theta = _uniform(gen, (b,), -HUE * strength, HUE * strength) * 2 * np.pi
    rot = torch.zeros(b, 3, 3, dtype=torch.float64)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = sat * torch.cos(theta), -sat * torch.sin(theta)
    rot[:, 2, 1], rot[:, 2, 2] = sat * torch.sin(theta), sat * torch.cos(theta)
    mats = bright.view(b, 1, 1) * (iyiq @ rot @ yiq)  # column-vector convention: rgb' = M rgb
    contrast = _factor(gen, (b,), CONTRAST, strength)
    gamma = torch.exp(_uniform(gen, (b,), -GAMMA * strength, GAMMA * strength))
    return mats.float(), contrast.float(), gamma.float()


def colour_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0,
                  white_balance: float = 0.0) -> torch.Tensor:
    """Stain jitter, then brightness/saturation/hue, contrast and gamma: uint8 in, uint8 out.

    Fused: with L = log(I + 1) (a 256-entry table), the jittered intensity is
    exp(L A - c + log 256) - 1 (A, c the OD affine map), and the colour map and contrast are one affine
    map of it (the contrast pivot, the image's mean, is an affine function of its channel means). Per
    image that is a table lookup, a 3x4 affine map of the colour channels, an exp, a second 3x4 map
    (rounded, saturated to uint8) and the gamma as a 256-entry table, each one OpenCV call on the
    interleaved image (`cv2.LUT`, `cv2.transform`, `cv2.exp`: SIMD, about 3x torch's batched
    matrix products on 3-channel images).
    """
    b, _, h, w = x.shape
    a, c = _stain_maps(b, gen, strength, white_balance)
    mats, contrast, gamma = _colour_maps(b, gen, strength)
    a, c, mats = a.double().numpy(), c.double().numpy(), mats.double().numpy()
    contrast, gamma = contrast.double().numpy(), gamma.double().numpy()
    # I' + 1 = 256 exp(-(OD A + c)) with OD = log 256 - L: exponent L A - log 256 (1 A) - c
    shift = np.log(256.0 / 255.0) - np.log(256.0) * a.sum(axis=1) - c               # (b, 3)
    levels = np.arange(256, dtype=np.float64) / 255.0
    src = x.numpy()
    out = np.empty((b, 3, h, w), np.uint8)
    for i in range(b):
        hwc = cv2.merge([src[i, 0], src[i, 1], src[i, 2]])  # planar -> interleaved (SIMD)
        e = cv2.transform(cv2.LUT(hwc, _LOG1P_TABLE), np.hstack([a[i].T, shift[i][:, None]]).astype(np.float32))
        cv2.exp(e, e)                                                                 # (I' + 1) / 255
        grey = (mats[i] @ (np.array(cv2.mean(e)[:3]) - 1.0 / 255.0)).mean()
        lin = contrast[i] * 255.0 * mats[i]                                           # 255 rgb' = lin e + off
        off = 255.0 * (1.0 - contrast[i]) * grey - lin.sum(axis=1) / 255.0 + 0.5      # + 0.5: truncation rounds
        rgb = cv2.transform(e, np.hstack([lin, off[:, None]]).astype(np.float32))
        np.clip(rgb, 0.0, 255.0, out=rgb)
        lut = np.rint(255.0 * levels ** gamma[i]).astype(np.uint8)
        out[i] = cv2.split(cv2.LUT(rgb.astype(np.uint8), lut))
    return torch.from_numpy(out)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (OpenCV, reflected border) of one uint8 (3, H, W) image."""
    return np.stack([cv2.GaussianBlur(plane, (0, 0), sigma) for plane in img])


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode one uint8 (3, H, W) image as JPEG at `quality` and decode it (OpenCV)."""
    ok, buf = cv2.imencode(".jpg", cv2.merge(list(img)), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return np.stack(cv2.split(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))) if ok else img


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur some images of a uint8 batch and JPEG-compress some (in place)."""
    b = x.shape[0]
    blur_pick = (torch.rand(b, generator=gen) < BLUR_P).tolist()
    sigma = torch.randint(0, len(BLUR_SIGMAS), (b,), generator=gen).tolist()
    jpeg_pick = (torch.rand(b, generator=gen) < JPEG_P).tolist()
    quality = torch.randint(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, (b,), generator=gen).tolist()
    arr = x.numpy()
    for i in range(b):
        if blur_pick[i]:
            arr[i] = _blur(arr[i], BLUR_SIGMAS[sigma[i]])
        if jpeg_pick[i]:
            arr[i] = _jpeg(arr[i], quality[i])
    return x


def rotate90(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image of a (B, C, S, S) batch by k x 90 degrees, k uniform in 0..3 (in place)."""
    ks = torch.randint(0, 4, (x.shape[0],), generator=gen).tolist()
    for i, k in enumerate(ks):
        if k:
            x[i] = torch.rot90(x[i], k, dims=(1, 2))
    return x


def stain_augment(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0,
                  white_balance: float = 0.0) -> torch.Tensor:
    """The whole augmentation of a uint8 (B, 3, S, S) CPU batch -> a new uint8 batch (see the module doc)."""
    if x.shape[0] == 0:
        return x.clone()
    return rotate90(degrade(colour_jitter(x, gen, strength, white_balance), gen), gen)


# --------------------------------------------------------------------------------------------
# Flips and zoom (every training batch, after the stain augmentation)
# --------------------------------------------------------------------------------------------

SCALE_LEVELS = 5  # discrete zoom factors in [scale_min, scale_max]: one resize call per level and batch


def scale_levels(scale: tuple[float, float], levels: int = SCALE_LEVELS) -> list[float]:
    """The discrete zoom factors drawn by `augment` (evenly spaced, one when min == max)."""
    lo, hi = float(scale[0]), float(scale[1])
    return [lo] if lo == hi else [lo + (hi - lo) * k / (levels - 1) for k in range(levels)]


def _fill_value(fill: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`fill` (a scalar or one value per channel) as a (1, C, 1, 1) tensor of x's dtype and device."""
    value = torch.as_tensor(fill, dtype=torch.float32).reshape(-1)
    if x.dtype == torch.uint8:
        value = value.round().clamp_(0, 255)
    return value.to(device=x.device, dtype=x.dtype).expand(x.shape[1]).view(1, -1, 1, 1)


def _rescale(x: torch.Tensor, s: float, fill: torch.Tensor) -> torch.Tensor:
    """Zoom a (b, C, S, S) batch by `s` about the centre, back to S px (bilinear, no antialias).

    s > 1: the central round(S/s) px are cropped, then enlarged to S (only pixels that are kept
    are computed). s < 1: the image shrinks to round(S*s) px, centred on a `fill` background.
    """
    size = x.shape[-1]
    if s > 1:
        c = max(1, round(size / s))
        if c == size:
            return x
        a = (size - c) // 2
        x = x[:, :, a:a + c, a:a + c].contiguous()  # a contiguous input takes the fast kernel
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    m = max(1, round(size * s))
    if m == size:
        return x
    out = fill.expand(x.shape[0], -1, size, size).clone()
    a = (size - m) // 2
    out[:, :, a:a + m, a:a + m] = F.interpolate(x, size=(m, m), mode="bilinear", align_corners=False,
                                                antialias=False)
    return out


def augment(x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.9, 1.1),
            fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Random h/v flips and rescale of a (B, C, S, S) batch (uint8 or float); returns a new tensor.

    Each image gets its own draws (from the CPU `generator`, so they do not depend on the device):
    flip left-right and up-down with probability 1/2 (exact, `torch.flip` on the chosen images),
    zoom by one of `scale_levels(scale)` (uniform) about the centre: s > 1 crops, s < 1 pads with
    `fill` (0 = the mean colour of a normalised batch; pass the mean colour for a uint8 batch).
    Images are grouped by zoom level, so there is one bilinear `interpolate` per level, and a uint8
    batch stays uint8 (the fast, 4x smaller path: normalise afterwards; CPU only, CUDA has no
    uint8 bilinear kernel).
    """
    b = x.shape[0]
    levels = scale_levels(scale)
    flips = torch.randint(0, 2, (b, 2), generator=generator).tolist()
    pick = torch.randint(0, len(levels), (b,), generator=generator)
    out = torch.empty_like(x)
    for i, (left_right, up_down) in enumerate(flips):  # per-image copies: cheaper than index_put
        dims = [d for d, on in ((1, up_down), (2, left_right)) if on]  # dims of one (C, S, S) image
        out[i].copy_(x[i].flip(dims) if dims else x[i])
    value = _fill_value(fill, x)
    for k, s in enumerate(levels):
        idx = (pick == k).nonzero().flatten()
        if abs(s - 1.0) < 1e-9 or not len(idx):
            continue
        scaled = _rescale(out.index_select(0, idx.to(x.device)), s, value)
        for j, i in enumerate(idx.tolist()):
            out[i].copy_(scaled[j])
    return out


def mean_colour(mean: torch.Tensor) -> torch.Tensor:
    """The dataset mean colour on the uint8 scale (0-255): the padding of uint8 augmentation."""
    return (mean.detach().float().cpu() * 255.0).round()
