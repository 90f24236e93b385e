"""Image transforms of the paper's recipes (timm's, as the original scripts built them).

Train: RandomResizedCrop (area share `crop_scale`..1) + flip + RandAugment + random erasing (`create_transform(is_training=True)`).
Eval: resize to a square (`eval_interpolation`: bilinear as the original, or bicubic), no centre crop (the
original's AU evaluation), ImageNet normalisation.

The pixel-cache fast path (`fmae.data.torch.cached`) runs the same train transform split in two: its PIL part
(crop, flip, RandAugment) in the loader workers, then tensor conversion, normalisation and erasing on the
device (`train_parts`).
"""

from __future__ import annotations

from typing import Any, Mapping

from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from fmae.data.pixel_cache import EVAL_INTERPOLATIONS
from fmae.run_spec import Augment, section_of


def train_transform(augment: Augment | Mapping[str, Any]):
    """From the run's augment section (or a mapping of its keys; an absent one at its default)."""
    a = section_of(Augment, augment)
    tf = create_transform(
        input_size=int(a.input_size),
        is_training=True,
        scale=(float(a.crop_scale), 1.0),
        color_jitter=None,
        auto_augment=a.auto_augment or None,
        interpolation="bicubic",
        re_prob=float(a.random_erase_prob),
        re_mode=a.random_erase_mode,
        re_count=1,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )
    _patch_posterize(tf)
    return tf


def train_parts(augment: Augment | Mapping[str, Any]) -> tuple[T.Compose, RandomErasing | None]:
    """The train transform as (its PIL part: crop, flip, RandAugment; its random erasing or None). What
    comes between them is ToTensor + the ImageNet normalisation, which the fast path does on the device."""
    steps = list(train_transform(augment).transforms)
    cut = next(i for i, t in enumerate(steps) if isinstance(t, T.ToTensor))
    tail = steps[cut:]
    assert isinstance(tail[1], T.Normalize) and len(tail) <= 3, tail
    eraser = tail[2] if len(tail) == 3 else None
    assert eraser is None or isinstance(eraser, RandomErasing), eraser
    return T.Compose(steps[:cut]), eraser


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # Pillow < 11 masked every bit away: a black image
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(tf) -> None:
    """RandAugment's "rand-m9-mstd0.5" draws magnitudes up to 10, where PosterizeIncreasing keeps 0 bits.
    Pillow >= 11 refuses 0 bits (ValueError mid-epoch); the original ran on a Pillow that returned a
    black image, so keep that behaviour."""
    for t in getattr(tf, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize


def eval_interpolation(augment: Augment | Mapping[str, Any]) -> str:
    """"bilinear" (the paper's recipes: the original's Resize([s, s]) takes torchvision's default) or
    "bicubic" — what run.toml files written before the key existed evaluated with."""
    name = str(section_of(Augment, augment).eval_interpolation)
    if name not in EVAL_INTERPOLATIONS:
        raise ValueError(f"eval_interpolation = {name!r}: choose one of {', '.join(EVAL_INTERPOLATIONS)}")
    return name


def eval_transform(augment: Augment | Mapping[str, Any]):
    a = section_of(Augment, augment)
    size = int(a.input_size)
    return T.Compose([
        T.Resize((size, size), interpolation=T.InterpolationMode(eval_interpolation(a))),
        T.ToTensor(),
        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])
