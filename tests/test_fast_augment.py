"""The OpenCV train augmentation (fmae.data.torch.fast_augment) against timm's PIL ops: the same random draws,
the same colour arithmetic, and geometric ops that differ only by interpolation rounding."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from fmae.data.torch.datasets import seeded_transform
from fmae.data.torch.fast_augment import apply_op, fast_pipeline
from fmae.data.torch.transforms import train_parts
from fmae.recipes import finetune_recipe

COLOUR = {"AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
          "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"}
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


def _faces(n: int = 4, side: int = 64) -> list[np.ndarray]:
    """Smooth images (upsampled noise) with a dark and a bright patch, so histograms have tails."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(30, 220, (6, 6, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)).copy()
        img[:4, :4] = 5
        img[-4:, -4:] = 250
        out.append(img)
    return out


def _parts(**extra):
    cfg = {**finetune_recipe("bp4d"), "input_size": 64, **extra}
    return train_parts(cfg)[0]


def _rng_after(fn, img, seed: int):
    """fn(img) under the item seed, and the next draw of each of the three generators after it."""
    def both(x):
        return fn(x), (random.random(), float(np.random.rand()), float(torch.rand(1)))
    return seeded_transform(both, img, seed)


def test_the_recipe_transform_has_a_fast_version_with_every_op_known():
    pipeline = fast_pipeline(_parts())
    assert pipeline is not None and len(pipeline.steps) == 2  # crop with its flip, RandAugment
    assert pipeline.steps[0].flip_p == 0.5
    names = {op.name for op in _parts().transforms[2].ops}
    assert names == COLOUR | GEOMETRIC


@pytest.mark.parametrize("name", sorted(COLOUR | GEOMETRIC))
def test_each_op_matches_pil(name):
    op = next(o for o in _parts().transforms[2].ops if o.name == name)
    op.prob = 1.0  # always applied, so every call compares pixels
    diffs, inside = [], []
    white = np.full_like(_faces(1)[0], 255)
    for img in _faces():
        for seed in range(4):
            pil, pil_next = _rng_after(lambda x: np.asarray(op(Image.fromarray(x))), img, seed)
            ours, our_next = _rng_after(lambda x: apply_op(op, x), img, seed)
            assert pil_next == our_next  # the same draws, in the same number
            assert ours.shape == pil.shape and ours.dtype == np.uint8
            diffs.append(np.abs(ours.astype(int) - pil.astype(int)))
            # where the same warp of a white image stays white, 2 px from any fill: away from the edge
            moved = _rng_after(lambda x: np.asarray(op(Image.fromarray(x))), white, seed)[0]
            inside.append(cv2.erode((moved == 255).all(2).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    d = np.stack(diffs)
    if name in COLOUR:
        assert d.max() <= 1 and (d == 0).mean() > 0.999, (d.max(), (d == 0).mean())  # Pillow's formulas
    else:  # interpolation kernels and the edge rule differ; what the op does does not
        interior = d[np.stack(inside)]
        assert interior.size > d.size / 6
        assert interior.mean() < 1.0 and np.percentile(interior, 99) <= 6, (interior.mean(), interior.max())
        assert d.mean() < 2.0


def test_the_whole_pipeline_draws_as_pil_does_and_stays_close():
    parts = _parts()
    fast = fast_pipeline(parts)
    means = []
    for img in _faces(6):
        for seed in range(10):
            pil, pil_next = _rng_after(lambda x: np.asarray(parts(Image.fromarray(x))), img, seed)
            ours, our_next = _rng_after(fast, img, seed)
            assert pil_next == our_next
            assert ours.shape == pil.shape == (64, 64, 3) and ours.flags.c_contiguous and ours.flags.writeable
            means.append(np.abs(ours.astype(int) - pil.astype(int)).mean())
    assert np.median(means) < 2.0 and max(means) < 25, (np.median(means), max(means))


def test_posterize_to_zero_bits_is_black_as_on_the_pil_path():
    op = next(o for o in _parts().transforms[2].ops if o.name == "PosterizeIncreasing")
    img = _faces(1)[0]
    zero_bits = type(op)("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={**op.hparams, "magnitude_std": 0})
    zero_bits.aug_fn = op.aug_fn  # fmae.data.torch.transforms' patch: Pillow >= 11 refuses 0 bits
    assert not apply_op(zero_bits, img).any() and not np.asarray(zero_bits(Image.fromarray(img))).any()


def test_an_unknown_transform_keeps_the_pil_path_and_an_unknown_op_runs_in_pil():
    assert fast_pipeline(_parts(auto_augment="augmix-m5-w4-d2")) is None  # AugMix: not RandAugment
    from timm.data.auto_augment import AugmentOp

    blur = AugmentOp("GaussianBlur", prob=1.0, magnitude=5)
    img = _faces(1)[0]
    pil, pil_next = _rng_after(lambda x: np.asarray(blur(Image.fromarray(x))), img, 0)
    ours, our_next = _rng_after(lambda x: apply_op(blur, x), img, 0)
    assert np.array_equal(pil, ours) and pil_next == our_next


def test_no_randaugment_and_no_crop_scale_still_match():
    parts = _parts(auto_augment="", crop_scale=1.0)
    fast = fast_pipeline(parts)
    assert fast is not None and len(fast.steps) == 1  # the crop with its flip
    img = _faces(1)[0]
    for seed in range(5):
        pil, pil_next = _rng_after(lambda x: np.asarray(parts(Image.fromarray(x))), img, seed)
        ours, our_next = _rng_after(fast, img, seed)
        assert pil_next == our_next and np.abs(ours.astype(int) - pil.astype(int)).mean() < 2.0


@pytest.mark.parametrize("dx, dy", [(37.3, 0.0), (-80.77, 0.0), (0.0, 12.5), (0.0, -3.01), (0.0, 99.99), (0.0, -120.4)])
def test_a_bicubic_translation_is_the_general_warp_as_a_filter(dx, dy):
    """Translations take a 4-tap filter instead of warpAffine: the same pixels (±1 from fixed-point)."""
    from fmae.data.torch import fast_warps

    img = _faces(1, side=96)[0]
    fill = (124, 116, 104)
    shifted = fast_warps.affine(img, (1, 0, dx, 0, 1, dy), fillcolor=fill)  # takes the filter path
    general = cv2.warpAffine(img, np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float64), (96, 96),
                             flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=fill)
    d = np.abs(shifted.astype(int) - general.astype(int))
    assert d.max() <= 1 and (d == 0).mean() > 0.999


@pytest.mark.parametrize("bx, dy", [(0.23, 0.0), (-0.3, 0.0), (0.0, 0.17), (0.0, -0.29)])
def test_a_bicubic_shear_is_the_general_warp_as_shifted_lines(bx, dy):
    """Shears move each row (ShearX) or column (ShearY) by its own amount, 4 taps a pixel, instead of
    warpAffine's 16: the same pixels (±1 from fixed-point)."""
    from fmae.data.torch import fast_warps

    img = _faces(1, side=96)[0]
    fill = (124, 116, 104)
    sheared = fast_warps.shear_lines(img, bx or dy, 1 if bx else 0, fill)
    assert np.array_equal(fast_warps.affine(img, (1, bx, 0, dy, 1, 0), fillcolor=fill), sheared)  # its path
    pillow = np.array([[1, bx, 0.5 * bx], [dy, 1, 0.5 * dy]], dtype=np.float64)  # Pillow's half-pixel centres
    general = cv2.warpAffine(img, pillow, (96, 96), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    d = np.abs(sheared.astype(int) - general.astype(int))
    assert d.max() <= 1 and (d == 0).mean() > 0.999


def test_the_pipeline_survives_pickling_to_a_spawned_worker():
    import pickle

    fast = fast_pipeline(_parts())
    again = pickle.loads(pickle.dumps(fast))
    img = _faces(1)[0]
    for seed in range(3):
        assert np.array_equal(seeded_transform(fast, img, seed), seeded_transform(again, img, seed))


def test_the_flip_done_on_the_crop_is_the_flip_of_the_resized_crop():
    """The pipeline flips the crop before resizing it; flipping after, as timm does, gives the same pixels
    (±1 where the fixed-point taps round apart) and the same draws after."""
    from fmae.data.torch import fast_augment

    crop, flip = _parts(auto_augment="").transforms
    fused = fast_pipeline(T.Compose([crop, flip]))
    apart = fast_augment._Pipeline([fast_augment._Crop(crop), fast_augment._Flip(flip.p)])
    flipped = 0
    for img in _faces(3):
        for seed in range(8):
            ours, our_next = _rng_after(fused, img, seed)
            theirs, their_next = _rng_after(apart, img, seed)
            assert our_next == their_next
            d = np.abs(ours.astype(int) - theirs.astype(int))
            assert d.max() <= 1 and (d == 0).mean() > 0.999
            flipped += not np.array_equal(ours, _rng_after(fast_augment._Pipeline([fast_augment._Crop(crop)]), img, seed)[0])
    assert 4 <= flipped <= 20  # about half the draws flip


def test_gray_is_pillows_l_exactly():
    """Colour and contrast read Pillow's L; the float32 transform computes it exactly, here on a million
    random colours and every extreme."""
    from fmae.data.torch import fast_augment

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    rgb[0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128],
                  [1, 254, 127], [254, 1, 128]]
    ours = fast_augment._gray(rgb.astype(np.float32))
    assert np.array_equal(ours, np.asarray(Image.fromarray(rgb).convert("L")))


def test_weighted_op_choice_draws_as_timm_does():
    """rand-…-tweights picks ops by weight without replacement (numpy's choice with p); unweighted, the fast path
    draws the same indices through randint."""
    parts = _parts(auto_augment="rand-m9-mstd0.5-inc1-tweights")
    assert parts.transforms[2].choice_weights is not None
    fast = fast_pipeline(parts)
    for seed in range(6):
        pil, pil_next = _rng_after(lambda x: np.asarray(parts(Image.fromarray(x))), _faces(1)[0], seed)
        ours, our_next = _rng_after(fast, _faces(1)[0], seed)
        assert pil_next == our_next and np.abs(ours.astype(int) - pil.astype(int)).mean() < 2.0
