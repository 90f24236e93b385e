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
- the crop's resize and the affine ops (`fast_warps`) interpolate with OpenCV's kernels (bicubic
  a = −0.75 where Pillow uses −0.5), and at the image border OpenCV blends the fill colour into the last
  pixel where Pillow does not: a level or two of difference at edges, none in what the augmentation does.
- a flip after the crop is done on the crop, before its resize (the bicubic taps are symmetric, so the
  two commute: 4 values in a million differ by 1), where it moves fewer pixels.

An op this module does not know (a transform list from another `auto_augment` string) runs through its
own PIL code on that image, so every recipe still works; `fast_augment = false` runs all of it in PIL.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp, RandAugment, _LEVEL_DENOM
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

from fmae.data.torch.fast_warps import (cv_interp, rotate, shear_x, shear_y, translate_x_abs, translate_x_rel,
                                        translate_y_abs, translate_y_rel)

cv2.setNumThreads(1)  # one loader worker = one core; OpenCV's own pool would oversubscribe it

_IDENTITY = np.arange(256, dtype=np.uint8)


def fast_pipeline(pil_part: T.Compose) -> Callable[[np.ndarray], np.ndarray] | None:
    """[H, W, 3] uint8 → [S, S, 3] uint8 doing what `pil_part` does, or None when a step of it has no
    fast equivalent (the caller keeps the PIL path)."""
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    for t in pil_part.transforms:
        if isinstance(t, RandomResizedCropAndInterpolation):
            steps.append(_Crop(t))
        elif isinstance(t, T.RandomHorizontalFlip):
            if steps and isinstance(steps[-1], _Crop) and steps[-1].flip_p is None:
                steps[-1].flip_p = t.p  # its draw comes right after the crop's, as on the PIL path
            else:
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
    """timm's RandomResizedCropAndInterpolation, and the horizontal flip after it (`flip_p`, when the
    pipeline has one): the same box and flip from the same draws, resized by OpenCV."""

    def __init__(self, t: RandomResizedCropAndInterpolation) -> None:
        self.t, self.flip_p = t, None  # set by fast_pipeline when a flip follows
        self._sizes: dict[tuple[int, int], Image.Image] = {}

    def __call__(self, img: np.ndarray) -> np.ndarray:
        t = self.t
        i, j, h, w = t.get_params(self._size_of(img), t.scale, t.ratio)
        interp = random.choice(t.interpolation) if isinstance(t.interpolation, (tuple, list)) else t.interpolation
        crop = img[i:i + h, j:j + w]
        if self.flip_p is not None and _flip_drawn(self.flip_p):
            crop = cv2.flip(crop, 1)
        out_h, out_w = t.size
        if (h, w) == (out_h, out_w):
            return crop
        return cv2.resize(crop, (out_w, out_h), interpolation=cv_interp(interp))

    def _size_of(self, img: np.ndarray) -> Image.Image:
        """get_params reads only the image's size: a 1-bit PIL image of it, made once, answers faster than
        a tensor view of the array."""
        size = (img.shape[1], img.shape[0])
        if size not in self._sizes:
            self._sizes[size] = Image.new("1", size)
        return self._sizes[size]


def _flip_drawn(p: float) -> bool:
    """torchvision's RandomHorizontalFlip draw, `torch.rand(1) < p`: torch compares in float32, so the
    float value is compared with p rounded to float32 (without the tensor comparison, 3x faster)."""
    return torch.rand(1).item() < float(np.float32(p))


class _Flip:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if _flip_drawn(self.p):
            return cv2.flip(np.ascontiguousarray(img), 1)  # contiguous, unlike a [:, ::-1] view
        return img


class _RandAugment:
    def __init__(self, t: RandAugment) -> None:
        self.t = t

    def __call__(self, img: np.ndarray) -> np.ndarray:
        t = self.t
        if t.choice_weights is None:  # what np.random.choice(t.ops, n) draws (the legacy generator's
            picks = np.random.randint(0, len(t.ops), size=t.num_layers)  # stream is frozen), 2x faster
        else:
            picks = np.random.choice(len(t.ops), t.num_layers, replace=False, p=t.choice_weights)
        for k in picks:
            img = apply_op(t.ops[k], img)
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


# Pillow's RGB → L is (R·19595 + G·38470 + B·7471 + 2^15) >> 16 (OpenCV's cvtColor rounds 0.1 % of pixels
# the other way). In float32 every product and partial sum is a multiple of 2^-16 below 256, which its
# 24 bits hold exactly, so the floor of one cv2.transform is Pillow's value: 3x the int32 arithmetic.
_GRAY = np.array([[19595, 38470, 7471, 32768]], dtype=np.float32) / 65536


def _gray(pixels: np.ndarray, channels: int = 1) -> np.ndarray:
    """float32 [H, W, 3] of uint8 values → Pillow's L as float32 [H, W], or [H, W, 3] for channels=3."""
    gray = cv2.transform(pixels, np.repeat(_GRAY, channels, axis=0))
    return np.floor(gray, out=gray)


def _blend(degenerate: np.ndarray | float, img: np.ndarray, factor: float, out: np.ndarray | None = None) -> np.ndarray:
    """Pillow's Image.blend(degenerate, img, factor): float32 arithmetic in its order, truncated, clipped.
    An array `degenerate` has img's shape; `out` may hold img as float32 already (and is overwritten)."""
    a = np.float32(factor)
    if np.isscalar(degenerate):
        lo = np.float32(degenerate)
        values = lo + a * (np.arange(256, dtype=np.float32) - lo)
        return _lut(img, np.clip(values, 0, 255).astype(np.uint8))
    lo = degenerate.astype(np.float32, copy=False)
    out = img.astype(np.float32) if out is None else out
    out -= lo
    out *= a
    out += lo
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def auto_contrast(img: np.ndarray, **_: Any) -> np.ndarray:
    h = _histograms(img)  # [3, 256]
    present = h > 0
    lo = present.argmax(axis=1)
    hi = 255 - present[:, ::-1].argmax(axis=1)
    scale = 255.0 / np.maximum(hi - lo, 1)
    luts = np.clip((np.arange(256)[None, :] * scale[:, None] - (lo * scale)[:, None]).astype(np.int64), 0, 255)
    luts[hi <= lo] = _IDENTITY  # one value (or none): Pillow leaves the channel
    return _lut(img, luts.astype(np.uint8))


def equalize(img: np.ndarray, **_: Any) -> np.ndarray:
    h = _histograms(img)  # [3, 256]
    last = h[np.arange(3), 255 - (h > 0)[:, ::-1].argmax(axis=1)]  # the count in each channel's top value
    step = np.where((h > 0).sum(axis=1) > 1, (h.sum(axis=1) - last) // 255, 0)
    below = np.concatenate((np.zeros((3, 1), dtype=np.int64), np.cumsum(h, axis=1)[:, :-1]), axis=1)
    luts = np.minimum(((step // 2)[:, None] + below) // np.maximum(step, 1)[:, None], 255)
    luts[step == 0] = _IDENTITY  # one value, or too few pixels above the top one: Pillow leaves the channel
    return _lut(img, luts.astype(np.uint8))


def invert(img: np.ndarray, **_: Any) -> np.ndarray:
    return cv2.bitwise_not(img)


def _flat(img: np.ndarray) -> np.ndarray:
    """[H, W·3] view: OpenCV applies a scalar and a mask per value of a one-channel image."""
    return img.reshape(img.shape[0], -1)


def posterize(img: np.ndarray, bits_to_keep: int, **_: Any) -> np.ndarray:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # as fmae.data.torch.transforms keeps it: the black image older Pillow made
        return np.zeros_like(img)
    mask = ~(2 ** (8 - bits_to_keep) - 1) & 0xFF
    return cv2.bitwise_and(_flat(img), mask).reshape(img.shape)


def solarize(img: np.ndarray, thresh: int, **_: Any) -> np.ndarray:
    """255 - x where x >= thresh: x XOR 255 under compare's mask."""
    return cv2.bitwise_xor(img, cv2.compare(_flat(img), thresh, cv2.CMP_GE).reshape(img.shape))


def solarize_add(img: np.ndarray, add: int, thresh: int = 128, **_: Any) -> np.ndarray:
    """min(255, x + add) where x < thresh: OpenCV's saturating add under compare's mask."""
    flat = _flat(img)
    out = flat.copy()
    cv2.add(flat, add, dst=out, mask=cv2.compare(flat, thresh, cv2.CMP_LT))
    return out.reshape(img.shape)


def color(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    pixels = img.astype(np.float32)
    return _blend(_gray(pixels, channels=3), img, factor, out=pixels)


def contrast(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    gray = _gray(img.astype(np.float32))
    mean = int(float(gray.sum(dtype=np.float64)) / gray.size + 0.5)  # ImageStat's mean of L, exact sums
    return _blend(float(mean), img, factor)


def brightness(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    return _blend(0.0, img, factor)


def sharpness(img: np.ndarray, factor: float, **_: Any) -> np.ndarray:
    """Pillow's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, the border pixels left as they are)
    blended with the image. Its rounding of S/13 (S an integer sum: the 3x3 box plus 4 times the centre)
    to nearest is never within float32's error of a tie, so floor(S/13 + ½) in float32 gives its pixels;
    kept in float32 for the blend."""
    pixels = img.astype(np.float32)
    box = cv2.boxFilter(pixels, -1, (3, 3), normalize=False, borderType=cv2.BORDER_REPLICATE)
    degenerate = cv2.addWeighted(box, 1 / 13, pixels, 4 / 13, 0.5)
    np.floor(degenerate, out=degenerate)
    degenerate[0], degenerate[-1] = pixels[0], pixels[-1]
    degenerate[:, 0], degenerate[:, -1] = pixels[:, 0], pixels[:, -1]
    return _blend(degenerate, img, factor, out=pixels)


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
