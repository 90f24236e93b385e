"""The geometric ops of the OpenCV train augmentation (`fast_augment`): Pillow's affine matrices,
OpenCV's bicubic kernel.

Pillow's transform(AFFINE, matrix) samples output pixel (x, y) at matrix·(x+½, y+½) in continuous
coordinates; OpenCV samples at integer pixel centres, hence the half-pixel shift in `affine`. Translations
and shears move whole rows or columns, so they run as a whole-pixel shift of each line and its 4 bicubic
taps (`shift`, `shear_lines`: warpAffine's pixels to ±1, 2–7× cheaper than its 16 taps a pixel); rotation
is the general warp. (Warping float32 pixels rounds to the 8-bit warp's values and is 1.3x faster from
an image out of the cache, but no faster from the crop's fresh output, which is what rotation gets.)
"""

from __future__ import annotations

import math
import random
from typing import Any

import cv2
import numpy as np
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.functional import pil_modes_mapping

_CV_INTERP = {Image.Resampling.NEAREST: cv2.INTER_NEAREST, Image.Resampling.BILINEAR: cv2.INTER_LINEAR,
              Image.Resampling.BICUBIC: cv2.INTER_CUBIC, Image.Resampling.LANCZOS: cv2.INTER_LANCZOS4}


def cv_interp(resample: Any) -> int:
    """A Pillow resampling filter or a torchvision InterpolationMode → OpenCV's flag (bicubic if unknown)."""
    if isinstance(resample, T.InterpolationMode):  # torchvision's enum (timm's crop) → Pillow's
        resample = pil_modes_mapping[resample]
    return _CV_INTERP.get(Image.Resampling(resample), cv2.INTER_CUBIC)


def affine(img: np.ndarray, matrix: tuple[float, ...], fillcolor: Any = None,
           resample: Any = Image.Resampling.BICUBIC, **_: Any) -> np.ndarray:
    """Pillow's img.transform(size, AFFINE, matrix, resample, fillcolor) on a [H, W, 3] uint8 array."""
    if isinstance(resample, (tuple, list)):  # timm's _interpolation draw
        resample = random.choice(resample)
    a, b, c, d, e, f = matrix
    fill = tuple(int(v) for v in fillcolor) if fillcolor is not None else (0, 0, 0)
    if resample == Image.Resampling.BICUBIC and (a, e) == (1, 1) and c == f == 0 and b * d == 0 and b + d != 0:
        return shear_lines(img, b or d, 1 if b else 0, fill)
    if (a, b, d, e) == (1, 0, 0, 1) and resample == Image.Resampling.BICUBIC:
        return shift(img, c, f, fill)
    m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]], dtype=np.float64)
    h, w = img.shape[:2]
    return cv2.warpAffine(img, m, (w, h), flags=cv_interp(resample) | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def cubic_taps(t: float | np.ndarray, a: float = -0.75) -> np.ndarray:
    """OpenCV's bicubic weights of the pixels at -1, 0, +1, +2 for a sample t ∈ [0, 1) past pixel 0
    ([4] float32, or [4, *t.shape] for an array of t)."""
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return np.array([w0, w1, w2, 1 - w0 - w1 - w2], dtype=np.float32)


def shift(img: np.ndarray, dx: float, dy: float, fill: tuple[int, ...]) -> np.ndarray:
    """warpAffine's bicubic translation (output (x, y) samples the input at (x + dx, y + dy), the fill
    outside) as what it is: a whole-pixel shift and one 4-tap filter along each moved axis — a
    fraction of the cost of the general warp."""
    out = img
    for axis, delta in ((1, dx), (0, dy)):
        if delta == 0:
            continue
        n = math.floor(delta)
        size = out.shape[axis]
        # the lines the output's taps read, n - 1 … n + size + 1, with the fill outside the image: no
        # more (a whole-image pad on each side filtered ~1.8x the pixels of a typical translation)
        lo, hi = n - 1, n + size + 2
        a = min(max(lo, 0), size)
        b = max(min(hi, size), a)  # the image's lines among them: [a, b)
        if a == b:  # moved out of sight: every tap reads the fill
            out = np.empty_like(out)
            out[...] = fill
            continue
        part = out[:, a:b] if axis == 1 else out[a:b]
        borders = (0, 0, a - lo, hi - b) if axis == 1 else (a - lo, hi - b, 0, 0)  # top, bottom, left, right
        padded = cv2.copyMakeBorder(part, *borders, cv2.BORDER_CONSTANT, value=fill)
        taps = cubic_taps(delta - n)
        kernel = taps.reshape(1, 4) if axis == 1 else taps.reshape(4, 1)
        anchor = (1, 0) if axis == 1 else (0, 1)
        filtered = cv2.filter2D(padded, -1, kernel, anchor=anchor, borderType=cv2.BORDER_REPLICATE)
        out = filtered[:, 1:size + 1] if axis == 1 else filtered[1:size + 1]
    return np.ascontiguousarray(out)


def shear_lines(img: np.ndarray, factor: float, axis: int, fill: tuple[int, ...]) -> np.ndarray:
    """warpAffine's bicubic shear as a translation of each row (axis 1: ShearX) or column (axis 0:
    ShearY) by its own amount: Pillow's matrix puts the samples of output row y at x + factor·(y + ½)
    (of column x at y + factor·(x + ½)). A whole-pixel shift of every line (one nearest-neighbour remap,
    the fill outside), then each line's 4 bicubic taps weighted and summed: 4 multiply-adds a pixel
    where the 2-D warp takes 16."""
    h, w = img.shape[:2]
    lines_n, along_n = (h, w) if axis == 1 else (w, h)
    offset = factor * (np.arange(lines_n) + 0.5)  # [L] where each line's samples start
    whole = np.floor(offset).astype(np.float32)
    taps = cubic_taps((offset - np.floor(offset)).astype(np.float32))  # [4, L]
    along = np.arange(-1, along_n + 2, dtype=np.float32)[None, :] + whole[:, None]  # [L, A+3]: 1 before, 2 after
    across = np.repeat(np.arange(lines_n, dtype=np.float32)[:, None], along_n + 3, axis=1)
    # each line a row of `lines` (a column of the image too: its taps then lie next to each other in
    # memory, 1.5x faster than reaching across rows), moved by its whole pixels
    map_x, map_y = (along, across) if axis == 1 else (across, along)
    lines = cv2.remap(img, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=fill).astype(np.float32).reshape(lines_n, -1)  # [L, (A+3)·3]
    row, value = lines.strides
    # [L, A·3, 4]: each output value's 4 taps, one pixel (3 values) apart, read in place; einsum sums
    # their products in one pass where numpy's operators take 7 over temporaries (1.6x)
    windows = np.lib.stride_tricks.as_strided(lines, (lines_n, along_n * 3, 4), (row, value, 3 * value),
                                              writeable=False)
    out = np.einsum("lak,kl->la", windows, taps)
    out += 0.5
    out = np.clip(out, 0, 255, out=out).astype(np.uint8).reshape(lines_n, along_n, 3)
    return out if axis == 1 else cv2.transpose(out)


def rotate(img: np.ndarray, degrees: float, **kwargs: Any) -> np.ndarray:
    h, w = img.shape[:2]
    cx, cy = w / 2.0, h / 2.0
    angle = -math.radians(degrees)  # Pillow's Image.rotate matrix, expand=False
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = -b, a
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return affine(img, (a, b, c, d, e, f), **kwargs)


def shear_x(img: np.ndarray, factor: float, **kwargs: Any) -> np.ndarray:
    return affine(img, (1, factor, 0, 0, 1, 0), **kwargs)


def shear_y(img: np.ndarray, factor: float, **kwargs: Any) -> np.ndarray:
    return affine(img, (1, 0, 0, factor, 1, 0), **kwargs)


def translate_x_rel(img: np.ndarray, pct: float, **kwargs: Any) -> np.ndarray:
    return affine(img, (1, 0, pct * img.shape[1], 0, 1, 0), **kwargs)


def translate_y_rel(img: np.ndarray, pct: float, **kwargs: Any) -> np.ndarray:
    return affine(img, (1, 0, 0, 0, 1, pct * img.shape[0]), **kwargs)


def translate_x_abs(img: np.ndarray, pixels: float, **kwargs: Any) -> np.ndarray:
    return affine(img, (1, 0, pixels, 0, 1, 0), **kwargs)


def translate_y_abs(img: np.ndarray, pixels: float, **kwargs: Any) -> np.ndarray:
    return affine(img, (1, 0, 0, 0, 1, pixels), **kwargs)
