"""The recipe's transforms: timm's RandAugment at the paper's magnitude must not crash on new Pillow,
and augmentation is a pure function of (seed, epoch, index)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from fmae.data.torch.datasets import ImageSet
from fmae.data.torch.transforms import eval_transform, train_transform
from fmae.recipes import finetune_recipe


def test_randaugment_at_full_magnitude_keeps_pillow_happy(tmp_path):
    cfg = {**finetune_recipe("bp4d"), "input_size": 32, "auto_augment": "rand-m10-n6-inc1"}
    tf = train_transform(cfg)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for s in range(200):  # magnitude 10 always reaches PosterizeIncreasing's 0-bit level when it is drawn
        random.seed(s)
        torch.manual_seed(s)
        np.random.seed(s)
        assert tf(img).shape == (3, 32, 32)


def test_augmentation_depends_only_on_seed_epoch_index(tmp_path):
    path = tmp_path / "face.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    cfg = {**finetune_recipe("bp4d"), "input_size": 32}
    data = ImageSet([path, path], np.zeros((2, 3), np.float32), train_transform(cfg), seed=5)
    first = data[1][0]
    torch.manual_seed(123)
    random.seed(9)
    np.random.seed(7)
    before = torch.get_rng_state()
    assert torch.equal(data[1][0], first)  # the process's RNG state does not matter…
    assert torch.equal(torch.get_rng_state(), before)  # …and is left untouched
    assert not torch.equal(data[0][0], first)  # another index, another augmentation
    data.epoch = 1
    assert not torch.equal(data[1][0], first)  # another epoch, another augmentation
    plain = ImageSet([path], np.zeros((1, 3), np.float32), eval_transform(cfg))
    assert torch.equal(plain[0][0], plain[0][0])


def test_crop_scale_sets_the_smallest_random_crop():
    def crop(cfg):  # timm's RandomResizedCropAndInterpolation
        return next(t for t in train_transform(cfg).transforms if "RandomResizedCrop" in type(t).__name__)

    paper = {**finetune_recipe("bp4d"), "input_size": 32}
    assert tuple(crop(paper).scale) == (0.08, 1.0)  # timm's default, the original's
    assert tuple(crop({**paper, "crop_scale": 0.5}).scale) == (0.5, 1.0)
    old = {k: v for k, v in paper.items() if k != "crop_scale"}  # a run.toml from before the key
    assert tuple(crop(old).scale) == (0.08, 1.0)


def test_crop_scale_out_of_range_is_one_line(tmp_path):
    from conftest import assert_one_line_error, run_fmae

    result = run_fmae("train", "bp4d", "--fold", "1", "--dry-run", "--set", "crop_scale=0", cwd=tmp_path)
    assert_one_line_error(result, "crop_scale = 0", "(0, 1]")


def _face(tmp_path, side: int = 112):
    """A face-sized image with detail at a few pixels' scale, where the resize filter matters."""
    small = np.random.default_rng(2).integers(0, 256, (14, 14, 3), dtype=np.uint8)
    path = tmp_path / "face.png"
    Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(path)
    return Image.open(path).convert("RGB")


def test_the_paper_recipes_evaluate_as_the_original(tmp_path):
    """The original's AU eval transform is `Resize([s, s])` with torchvision's default interpolation."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import transforms as T

    original = T.Compose([T.Resize([64, 64]), T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    img = _face(tmp_path)
    for dataset in ("bp4d", "bp4d_plus", "disfa", "rafdb", "affectnet8"):
        cfg = {**finetune_recipe(dataset), "input_size": 64}
        assert cfg["eval_interpolation"] == "bilinear", dataset
        assert torch.equal(eval_transform(cfg)(img), original(img))
    bicubic = eval_transform({**cfg, "eval_interpolation": "bicubic"})(img)
    gap = (bicubic - original(img)).abs().max().item()
    assert 0.1 < gap < 1.0  # the other choice is a real difference at 112 -> 64 px (here 0.14)
    old = {k: v for k, v in cfg.items() if k != "eval_interpolation"}  # a run.toml from before the key
    assert torch.equal(eval_transform(old)(img), bicubic)
    native = _face(tmp_path, side=64)  # at the native size both filters leave the pixels alone
    assert torch.equal(eval_transform(cfg)(native), eval_transform({**cfg, "eval_interpolation": "bicubic"})(native))


def test_eval_and_head_settings_show_their_source_and_refuse_other_values(tmp_path):
    from conftest import assert_one_line_error, run_fmae

    shown = run_fmae("train", "bp4d", "--fold", "1", "--dry-run", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[1]: line for line in shown.stdout.splitlines() if line.startswith("│")}
    assert "bilinear" in rows["eval_interpolation"] and "recipe bp4d/fmae" in rows["eval_interpolation"]
    assert "redraw" in rows["head_init"] and "recipe bp4d/fmae" in rows["head_init"]
    chosen = run_fmae("train", "bp4d", "--fold", "1", "--dry-run", "--set", "eval_interpolation=bicubic",
                      "--set", "head_init=keep", cwd=tmp_path)
    rows = {line.split()[1]: line for line in chosen.stdout.splitlines() if line.startswith("│")}
    assert "bicubic" in rows["eval_interpolation"] and "command line" in rows["eval_interpolation"]
    assert "keep" in rows["head_init"] and "command line" in rows["head_init"]
    bad = run_fmae("train", "bp4d", "--fold", "1", "--dry-run", "--set", "eval_interpolation=lanczos", cwd=tmp_path)
    assert_one_line_error(bad, "eval_interpolation = 'lanczos'", "choose one of bilinear, bicubic")
    bad = run_fmae("train", "bp4d", "--fold", "1", "--dry-run", "--set", "head_init=zero", cwd=tmp_path)
    assert_one_line_error(bad, "head_init = 'zero'", "choose one of redraw, keep")
