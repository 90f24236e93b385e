"""The train transform's PIL part (crop, flip, RandAugment) on uint8 arrays with OpenCV: the pixel
cache's fast path (`fast_augment`, default true).

timm's ops run in Pillow, whose affine warps (rotate, shear, translate) take 3–7 ms per 224-px image on
one core and make the augmentation cost more than decoding the JPEG. Here every step draws its random
numbers exactly as the timm/torchvision object it replaces does — the same calls to python's `random`,
numpy's and torch's generators, in the same order — so under `seeded_transform` each image gets the same
crop box, flip, ops and magnitudes as on the PIL path. Only the pixel arithmetic differs:

- colour ops (auto-contrast, equalize, invert, posterize, solarize, solarize-add, brightness, contrast,
  colour) repeat Pillow's formulas: the same pixels, or ±1 where float rounding differs;
- sharpness uses Pillow's SMOOTH kernel and border rule, rounded as Pillow rounds;
- the crop's resize and the affine ops interpolate with OpenCV's kernels (bicubic a = −0.75 where Pillow
  uses −0.5), and at the image border OpenCV blends the fill colour into the last pixel where Pillow does
  not: a level or two of difference at edges, none in what the augmentation does. Translations and
  shears give warpAffine's pixels (±1) without its 16 taps a pixel: each moves whole rows or columns, so
  a whole-pixel shift of each line and its 4 bicubic taps do it (`_shift`, `_shear`; 2–7× faster);
  rotation stays the general warp.

An op this module does not know (a transform list from another `auto_augment` string) runs through its
own PIL code on that image, so every recipe still works; `fast_augment = false` runs all of it in PIL.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp, RandAugment, _LEVEL_DENOM
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T
from torchvision.transforms.functional import pil_modes_mapping

cv2.setNumThreads(1)  # one loader worker = one core; OpenCV's own pool would oversubscribe it

_CV_INTERP = {Image.Resampling.NEAREST: cv2.INTER_NEAREST, Image.Resampling.BILINEAR: cv2.INTER_LINEAR,
              Image.Resampling.BICUBIC: cv2.INTER_CUBIC, Image.Resampling.LANCZOS: cv2.INTER_LANCZOS4}
_IDENTITY = np.arange(256, dtype=np.uint8)


def fast_pipeline(pil_part: T.Compose) -> Callable[[np.ndarray], np.ndarray] | None:
    """[H, W, 3] uint8 → [S, S, 3] uint8 doing what `pil_part` does, or None when a step of it has no
    fast equivalent (the caller keeps the PIL path)."""
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    for t in pil_part.transforms:
        if isinstance(t, RandomResizedCropAndInterpolation):
            steps.append(_Crop(t))
        elif isinstance(t, T.RandomHorizontalFlip):
            steps.append(_Flip(t.p))
        elif isinstance(t, RandAugment):
            steps.append(_RandAugment(t))
        else:
            return None
    return _Pipeline(steps)


class _Pipeline:
    def __init__(self, steps: list[Callable[[np.ndarray], np.ndarray]]) -> None:
        self.steps = steps

    def __call__(self, img: np.ndarray) -> np.ndarray:
        for step in self.steps:
            img = step(img)
        return np.ascontiguousarray(img)


class _Crop:
    """timm's RandomResizedCropAndInterpolation: the same box from the same draws, resized by OpenCV."""

    def __init__(self, t: RandomResizedCropAndInterpolation) -> None:
        self.t = t

    def __call__(self, img: np.ndarray) -> np.ndarray:
        t = self.t
        # get_params reads only the size: a [3, H, W] view of the array answers it
        i, j, h, w = t.get_params(torch.from_numpy(img).permute(2, 0, 1), t.scale, t.ratio)
        interp = random.choice(t.interpolation) if isinstance(t.interpolation, (tuple, list)) else t.interpolation
        out_h, out_w = t.size
        crop = img[i:i + h, j:j + w]
        if (h, w) == (out_h, out_w):
            return crop
        return cv2.resize(crop, (out_w, out_h), interpolation=_cv_interp(interp))


class _Flip:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if torch.rand(1) < self.p:  # torchvision's RandomHorizontalFlip draw
            return cv2.flip(np.ascontiguousarray(img), 1)  # contiguous, unlike a [:, ::-1] view
        return img


class _RandAugment:
    def __init__(self, t: RandAugment) -> None:
        self.t = t

    def __call__(self, img: np.ndarray) -> np.ndarray:
        t = self.t
        ops = np.random.choice(t.ops, t.num_layers, replace=t.choice_weights is None, p=t.choice_weights)
        for op in ops:
            img = apply_op(op, img)
        return img


def apply_op(op: AugmentOp, img: np.ndarray) -> np.ndarray:
    """`op(img)` on an array: AugmentOp.__call__'s draws, then the op by name."""
    fn = _OPS.get(op.name)
    if fn is None:  # no fast version: the op's own PIL code draws and works on this image
        return np.asarray(op(Image.fromarray(np.ascontiguousarray(img))))
    if op.prob < 1.0 and random.random() > op.prob:
        return img
    magnitude = op.magnitude
    if op.magnitude_std > 0:
        if op.magnitude_std == float("inf"):
            magnitude = random.uniform(0, magnitude)
        else:
            magnitude = random.gauss(magnitude, op.magnitude_std)
    magnitude = max(0.0, min(magnitude, op.magnitude_max or _LEVEL_DENOM))
    level_args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
    return fn(np.ascontiguousarray(img), *level_args, **op.kwargs)


# --- colour ops: Pillow's formulas -----------------------------------------------------------------

def _lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """lut: [256] for every channel or [3, 256] per channel."""
    if lut.ndim == 1:
        return cv2.LUT(img, lut)
    return cv2.LUT(img, np.ascontiguousarray(lut.T).reshape(256, 1, 3))


def _histograms(img: np.ndarray) -> np.ndarray:
    return np.stack([cv2.calcHist([img], [c], None, [256], [0, 256]).ravel().astype(np.int64)
                     for c in range(3)])  # [3, 256]


def _gray(img: np.ndarray) -> np.ndarray:
    """Pillow's RGB → L: (R·19595 + G·38470 + B·7471 + 2^15) >> 16 (OpenCV's cvtColor rounds 0.1 % of
    pixels the other way)."""
    x = img.astype(np.int32)
    return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _blend(degenerate: np.ndarray | float, img: np.ndarray, factor: float) -> np.ndarray:
    """Pillow's Image.blend(degenerate, img, factor): float32 arithmetic, truncated, clipped (an array
    `degenerate` may be float32 already)."""
    a = np.float32(factor)
    if np.isscalar(degenerate):
        lo = np.float32(degenerate)
        values = lo + a * (np.arange(256, dtype=np.float32) - lo)
        return _lut(img, np.clip(values, 0, 255).astype(np.uint8))
    lo = degenerate if degenerate.dtype == np.float32 else degenerate.astype(np.float32)
    out = img.astype(np.float32)
    out -= lo
    out *= a
    out += lo
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def auto_contrast(img: np.ndarray, **_: Any) -> np.ndarray:
    luts = np.empty((3, 256), dtype=np.uint8)
    for c, h in enumerate(_histograms(img)):
        nz = np.flatnonzero(h)
        lo, hi = int(nz[0]), int(nz[-1])
        if hi <= lo:
            luts[c] = _IDENTITY
        else:
            scale = 255.0 / (hi - lo)
            luts[c] = np.clip((np.arange(256) * scale - lo * scale).astype(np.int64), 0, 255)
    return _lut(img, luts)


def equalize(img: np.ndarray, **_: Any) -> np.ndarray:
    luts = np.empty((3, 256), dtype=np.uint8)
    for c, h in enumerate(_histograms(img)):
        nz = h[h > 0]
        step = (int(nz.sum()) - int(nz[-1])) // 255 if len(nz) > 1 else 0
        if not step:
            luts[c] = _IDENTITY
        else:
            n = step // 2 + np.concatenate(([0], np.cumsum(h)[:-1]))
            luts[c] = np.minimum(n // step, 255)
    return _lut(img, luts)


def invert(img: np.ndarray, **_: Any) -> np.ndarray:
    return cv2.bitwise_not(img)


def posterize(img: np.ndarray, bits_to_keep: int, **_: Any) -> np.ndarray:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # as fmae.data.torch.transforms keeps it: the black image older Pillow made
        return np.zeros_like(img)
    mask = np.uint8(~(2 ** (8 - bits_to_keep) - 1) & 0xFF)
    return cv2.bitwise_and(img, np.full_like(img, mask))


def solarize(img: np.ndarray, thresh: int, **_: Any) -> np.ndarray:
    return _lut(img, np.where(_IDENTITY < thresh, _IDENTITY, 255 - _IDENTITY).astype(np.uint8))


def solarize_add(img: np.ndarray, add: int, thresh: int = 128, **_: Any) -> np.ndarray:
    i = np.arange(256)
    return _lut(img, np.where(i < thresh, np.minimum(255, i + add), i).astype(np.uint8))


def color(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    return _blend(np.repeat(_gray(img)[..., None], 3, axis=2), img, factor)


def contrast(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    h = np.bincount(_gray(img).ravel(), minlength=256)
    mean = int(float((h * np.arange(256)).sum()) / float(h.sum()) + 0.5)
    return _blend(float(mean), img, factor)


def brightness(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    return _blend(0.0, img, factor)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13


def sharpness(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    smooth = cv2.filter2D(img, cv2.CV_32F, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    # Pillow's filtered uint8 image, kept in float32 for the blend: floor(x + ½) clipped is its rounding
    smooth += 0.5
    degenerate = np.clip(np.floor(smooth, out=smooth), 0, 255, out=smooth)
    degenerate[0], degenerate[-1], degenerate[:, 0], degenerate[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
    return _blend(degenerate, img, factor)


# --- geometric ops: Pillow's matrices, OpenCV's warp -----------------------------------------------

def _affine(img: np.ndarray, matrix: tuple[float, ...], fillcolor: Any = None,
            resample: Any = Image.Resampling.BICUBIC, **_: Any) -> np.ndarray:
    """Pillow's transform(AFFINE, matrix): output pixel (x, y) samples the input at matrix·(x+½, y+½)
    in continuous coordinates; OpenCV samples at integer pixel centres, hence the half-pixel shift."""
    if isinstance(resample, (tuple, list)):  # timm's _interpolation draw
        resample = random.choice(resample)
    a, b, c, d, e, f = matrix
    fill = tuple(int(v) for v in fillcolor) if fillcolor is not None else (0, 0, 0)
    if resample == Image.Resampling.BICUBIC and (a, e) == (1, 1) and c == f == 0 and b * d == 0 and b + d != 0:
        return _shear(img, b or d, 1 if b else 0, fill)
    if (a, b, d, e) == (1, 0, 0, 1) and resample == Image.Resampling.BICUBIC:
        return _shift(img, c, f, fill)
    m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]], dtype=np.float64)
    h, w = img.shape[:2]
    return cv2.warpAffine(img, m, (w, h), flags=_cv_interp(resample) | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def _cubic_taps(t: float | np.ndarray, a: float = -0.75) -> np.ndarray:
    """OpenCV's bicubic weights of the pixels at -1, 0, +1, +2 for a sample t ∈ [0, 1) past pixel 0
    ([4] float32, or [4, *t.shape] for an array of t)."""
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return np.array([w0, w1, w2, 1 - w0 - w1 - w2], dtype=np.float32)


def _shift(img: np.ndarray, dx: float, dy: float, fill: tuple[int, ...]) -> np.ndarray:
    """warpAffine's bicubic translation (output (x, y) samples the input at (x + dx, y + dy), the fill
    outside) as what it is: a whole-pixel shift and one 4-tap filter along each moved axis — a
    fraction of the cost of the general warp."""
    out = img
    for axis, delta in ((1, dx), (0, dy)):
        if delta == 0:
            continue
        n = math.floor(delta)
        size = out.shape[axis]
        pad = abs(n) + 3
        borders = (0, 0, pad, pad) if axis == 1 else (pad, pad, 0, 0)  # top, bottom, left, right
        padded = cv2.copyMakeBorder(out, *borders, cv2.BORDER_CONSTANT, value=fill)
        taps = _cubic_taps(delta - n)
        kernel = taps.reshape(1, 4) if axis == 1 else taps.reshape(4, 1)
        anchor = (1, 0) if axis == 1 else (0, 1)
        filtered = cv2.filter2D(padded, -1, kernel, anchor=anchor, borderType=cv2.BORDER_REPLICATE)
        window = [slice(None)] * 3
        window[axis] = slice(pad + n, pad + n + size)
        out = filtered[tuple(window)]
    return np.ascontiguousarray(out)


def _shear(img: np.ndarray, factor: float, axis: int, fill: tuple[int, ...]) -> np.ndarray:
    """warpAffine's bicubic shear as a translation of each row (axis 1: ShearX) or column (axis 0:
    ShearY) by its own amount: Pillow's matrix puts the samples of output row y at x + factor·(y + ½)
    (of column x at y + factor·(x + ½)). A whole-pixel shift of every line (one nearest-neighbour remap,
    the fill outside), then each line's 4 bicubic taps weighted and summed: 4 multiply-adds a pixel
    where the 2-D warp takes 16."""
    h, w = img.shape[:2]
    lines_n, along_n = (h, w) if axis == 1 else (w, h)
    shift = factor * (np.arange(lines_n) + 0.5)  # [L] where each line's samples start
    whole = np.floor(shift).astype(np.float32)
    taps = _cubic_taps((shift - np.floor(shift)).astype(np.float32))  # [4, L]
    along = np.arange(-1, along_n + 2, dtype=np.float32)  # [A+3]: 1 before, 2 after for the taps
    if axis == 1:
        map_x = along[None, :] + whole[:, None]  # [H, W+3]
        map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], along_n + 3, axis=1)
        weights = taps[:, :, None, None]  # [4, H, 1, 1]
    else:
        map_y = along[:, None] + whole[None, :]  # [H+3, W]
        map_x = np.repeat(np.arange(w, dtype=np.float32)[None, :], along_n + 3, axis=0)
        weights = np.repeat(taps[:, None, :, None], 3, axis=3)  # [4, 1, W, 3]: numpy's inner loop runs along W·3
    lines = cv2.remap(img, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=fill).astype(np.float32)  # every line moved by its whole pixels
    window = (lambda k: lines[:, k:k + w]) if axis == 1 else (lambda k: lines[k:k + h])
    out = window(0) * weights[0]
    for k in (1, 2, 3):
        out += window(k) * weights[k]
    return np.clip(out + 0.5, 0, 255, out=out).astype(np.uint8)


def rotate(img: np.ndarray, degrees: float, **kwargs: Any) -> np.ndarray:
    h, w = img.shape[:2]
    cx, cy = w / 2.0, h / 2.0
    angle = -math.radians(degrees)  # Pillow's Image.rotate matrix, expand=False
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = -b, a
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return _affine(img, (a, b, c, d, e, f), **kwargs)


def shear_x(img: np.ndarray, factor: float, **kwargs: Any) -> np.ndarray:
    return _affine(img, (1, factor, 0, 0, 1, 0), **kwargs)


def shear_y(img: np.ndarray, factor: float, **kwargs: Any) -> np.ndarray:
    return _affine(img, (1, 0, 0, factor, 1, 0), **kwargs)


def translate_x_rel(img: np.ndarray, pct: float, **kwargs: Any) -> np.ndarray:
    return _affine(img, (1, 0, pct * img.shape[1], 0, 1, 0), **kwargs)


def translate_y_rel(img: np.ndarray, pct: float, **kwargs: Any) -> np.ndarray:
    return _affine(img, (1, 0, 0, 0, 1, pct * img.shape[0]), **kwargs)


def translate_x_abs(img: np.ndarray, pixels: float, **kwargs: Any) -> np.ndarray:
    return _affine(img, (1, 0, pixels, 0, 1, 0), **kwargs)


def translate_y_abs(img: np.ndarray, pixels: float, **kwargs: Any) -> np.ndarray:
    return _affine(img, (1, 0, 0, 0, 1, pixels), **kwargs)


def _cv_interp(resample: Any) -> int:
    if isinstance(resample, T.InterpolationMode):  # torchvision's enum (timm's crop) → Pillow's
        resample = pil_modes_mapping[resample]
    return _CV_INTERP.get(Image.Resampling(resample), cv2.INTER_CUBIC)


# timm's op names (fmae.data.torch.transforms builds the ops; its posterize patch is `posterize` here)
_OPS: dict[str, Callable[..., np.ndarray]] = {
    "AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate,
    "Posterize": posterize, "PosterizeIncreasing": posterize, "PosterizeOriginal": posterize,
    "Solarize": solarize, "SolarizeIncreasing": solarize, "SolarizeAdd": solarize_add,
    "Color": color, "ColorIncreasing": color, "Contrast": contrast, "ContrastIncreasing": contrast,
    "Brightness": brightness, "BrightnessIncreasing": brightness,
    "Sharpness": sharpness, "SharpnessIncreasing": sharpness,
    "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x_abs, "TranslateY": translate_y_abs,
    "TranslateXRel": translate_x_rel, "TranslateYRel": translate_y_rel,
}
