"""The engine's fast paths compute what the plain paths compute: the pixel cache (uint8 batches finished
on the device) against JPEG decoding per item, fused against unfused attention, fused/multi-tensor AdamW
against the per-parameter loop. Each has a config switch back to the plain path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import assert_one_line_error, run_fmae
from fmae.data.torch.cached import CachedImageSet, choose_cache, image_set
from fmae.data.torch.datasets import ImageSet
from fmae.data.image_files import list_images
from fmae.data.pixel_cache import PixelCache, build_cache, default_cache_dir
from fmae.errors import FmaeError
from fmae.recipes import finetune_recipe


def _folder(tmp_path: Path, n: int = 6, side: int = 48, square: bool = False) -> tuple[Path, list[Path]]:
    """Face-like JPEGs (smooth, so resampling is non-trivial) in two sub-folders; not all square unless
    `square`."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((side + (0 if square else 2 * i), side), Image.Resampling.BICUBIC)
        path = root / f"S{i % 2}" / f"frame_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
        paths.append(path)
    return root, paths


def _cfg(size: int, **extra) -> dict:
    return {**finetune_recipe("bp4d"), "input_size": size, "seed": 3, "dataset": "bp4d", "data_cache": "auto", **extra}


def _batch(data, device="cpu") -> torch.Tensor:
    x, _, _ = next(iter(DataLoader(data, batch_size=len(data), shuffle=False)))
    return data.to_device(x, torch.device(device))


def _sets(root: Path, paths: list[Path], cfg: dict, train: bool) -> tuple[ImageSet, CachedImageSet]:
    targets = np.zeros((len(paths), 2), np.float32)
    cache, keys = choose_cache(cfg, root, {"x": paths})
    assert cache is not None
    plain = image_set(cfg, paths, targets, train=train)
    fast = image_set(cfg, paths, targets, train=train, cache=cache, keys=keys["x"])
    assert type(plain) is ImageSet and type(fast) is CachedImageSet
    return plain, fast


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_from_the_cache_feeds_the_model_the_same_numbers(tmp_path, interpolation):
    """For the paper's bilinear eval resize (the default) and the bicubic choice alike."""
    root, paths = _folder(tmp_path)
    default = interpolation == _cfg(32)["eval_interpolation"]
    report = build_cache(root, size=32, **({} if default else {"interpolation": interpolation}))
    assert report.out == default_cache_dir(root, 32, interpolation) == root / ".fmae-cache" / f"32px-{interpolation}"
    assert report.written == len(paths)
    plain, fast = _sets(root, paths, _cfg(32, eval_interpolation=interpolation), train=False)
    a, b = _batch(plain), _batch(fast)
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (len(paths), 3, 32, 32)
    assert torch.equal(a, b)  # bit for bit: same resize, same ToTensor + Normalize arithmetic
    assert b.is_contiguous()


def test_a_cache_is_read_only_by_runs_of_its_interpolation(tmp_path, caplog):
    """A bicubic cache is never used for a bilinear run: auto looks in the bilinear folder (and says why
    the older bicubic one is not read); an explicit folder of the other interpolation is an error."""
    import json

    import lmdb

    root, paths = _folder(tmp_path)
    bilinear, bicubic = _cfg(32), _cfg(32, eval_interpolation="bicubic")
    build_cache(root, size=32, interpolation="bicubic")
    assert choose_cache(bicubic, root, {"x": paths})[0].interpolation == "bicubic"
    with caplog.at_level("INFO", logger="fmae.train"):
        assert choose_cache(bilinear, root, {"x": paths}) == (None, {})
    assert "no pixel cache at " + str(default_cache_dir(root, 32, "bilinear")) in caplog.text
    assert "--interpolation bilinear" in caplog.text
    explicit = {**bilinear, "data_cache": str(default_cache_dir(root, 32, "bicubic"))}
    with pytest.raises(FmaeError, match="holds bicubic-resized images but this run evaluates bilinear"):
        choose_cache(explicit, root, {"x": paths})
    with pytest.raises(FmaeError, match="holds bicubic-resized images; build --interpolation bilinear"):
        build_cache(root, out=default_cache_dir(root, 32, "bicubic"), size=32, interpolation="bilinear")

    # A cache of the previous format (folder `32px`, no interpolation recorded) was made bicubic.
    old = root / ".fmae-cache" / "32px"
    default_cache_dir(root, 32, "bicubic").rename(old)
    env = lmdb.open(str(old), subdir=True)
    with env.begin(write=True) as txn:
        for key in (b"__meta__", b"__index__"):
            entry = json.loads(txn.get(key))
            del entry["interpolation"]
            entry["format_version"] = 1
            txn.put(key, json.dumps(entry).encode())
    env.close()
    caplog.clear()
    with caplog.at_level("INFO", logger="fmae.train"):
        assert choose_cache(bilinear, root, {"x": paths}) == (None, {})
    assert f"{old} was resized bicubically by an older fmae" in caplog.text
    cache, _ = choose_cache(bicubic, root, {"x": paths})  # e.g. a run.toml from before eval_interpolation
    assert cache.path == old and cache.interpolation == "bicubic"
    plain, fast = _sets(root, paths, bicubic, train=False)
    assert torch.equal(_batch(plain), _batch(fast))


def test_train_from_the_cache_draws_the_same_augmentation(tmp_path):
    """From a cache at the images' own size, crop/flip/RandAugment in PIL (fast_augment = false) give
    identical pixels and erasing the same rectangles (filled with other N(0, 1) noise); another epoch,
    another augmentation. (The OpenCV ops against PIL's: tests/test_fast_augment.py.)"""
    root, square = _folder(tmp_path, side=40, square=True)
    build_cache(root, size=40)
    plain, fast = _sets(root, square, _cfg(40, random_erase_prob=0.0, fast_augment=False), train=True)
    for epoch in (0, 1):
        plain.epoch = fast.epoch = epoch
        assert torch.equal(_batch(plain), _batch(fast))

    plain, fast = _sets(root, square, _cfg(40, random_erase_prob=1.0, fast_augment=False), train=True)
    a, b = _batch(plain), _batch(fast)
    boxes = next(iter(DataLoader(fast, batch_size=len(fast))))[0]["erase"]
    for i in range(len(square)):
        top, left, h, w = boxes[i, 0].tolist()
        assert h > 0 and w > 0
        inside = torch.zeros(40, 40, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert torch.equal(a[i][:, ~inside], b[i][:, ~inside])  # same pixels outside the rectangle
        assert not torch.equal(a[i][:, inside], b[i][:, inside])  # other noise inside it
    noise = torch.cat([b[i, :, t:t + h, l:l + w].flatten() for i, (t, l, h, w) in enumerate(boxes[:, 0].tolist())])
    assert abs(noise.mean().item()) < 0.2 and abs(noise.std().item() - 1) < 0.2
    assert torch.equal(_batch(fast), b)  # the device noise is a function of (seed, epoch, index)
    import pickle

    spawned = pickle.loads(pickle.dumps(fast))  # what a spawned worker gets, after the device finish ran
    assert torch.equal(spawned[0][0]["pixels"], fast[0][0]["pixels"])


def test_train_from_a_resizing_cache_has_the_plain_shape_and_range(tmp_path):
    root, paths = _folder(tmp_path)
    build_cache(root, size=32)
    plain, fast = _sets(root, paths, _cfg(32), train=True)
    a, b = _batch(plain), _batch(fast)
    assert a.shape == b.shape and a.dtype == b.dtype
    lo, hi = (0 - 0.485) / 0.229 - 5, (1 - 0.406) / 0.225 + 5  # normalised pixels, or erasing noise
    assert lo < b.min() and b.max() < hi


def test_the_cache_is_chosen_only_when_it_covers_the_run(tmp_path, caplog):
    root, paths = _folder(tmp_path)
    cfg = _cfg(32)
    assert choose_cache(cfg, root, {"train": paths}) == (None, {})  # no cache yet: plain path
    build_cache(root, size=32)
    assert choose_cache({**cfg, "data_cache": "off"}, root, {"train": paths}) == (None, {})
    assert choose_cache({**cfg, "input_size": 48}, root, {"train": paths}) == (None, {})  # no 48 px cache
    cache, keys = choose_cache(cfg, root, {"train": paths})
    assert keys["train"] == [p.relative_to(root).as_posix() for p in paths]

    os.utime(paths[2], ns=(1, 1))  # the file changed after caching
    with caplog.at_level("WARNING", logger="fmae.train"):
        assert choose_cache(cfg, root, {"train": paths}) == (None, {})
    assert "changed since it was built" in caplog.text
    assert "fmae data cache bp4d --size 32 --interpolation bilinear" in caplog.text
    explicit = {**cfg, "data_cache": str(default_cache_dir(root, 32))}
    with pytest.raises(FmaeError, match="changed since it was built"):
        choose_cache(explicit, root, {"train": paths})
    report = build_cache(root, size=32)  # the update decodes only what changed
    assert (report.written, report.unchanged) == (1, len(paths) - 1)
    assert choose_cache(explicit, root, {"train": paths})[0] is not None

    paths[0].unlink()
    assert build_cache(root, size=32).removed == 1
    extra = root / "S9" / "new.jpg"
    extra.parent.mkdir()
    Image.new("RGB", (8, 8)).save(extra)
    with pytest.raises(FmaeError, match="1 of the train images are not in it"):
        choose_cache(explicit, root, {"train": paths[1:] + [extra]})
    with pytest.raises(FmaeError, match="holds 32 px images but input_size is 48"):
        choose_cache({**explicit, "input_size": 48}, root, {"train": paths[1:]})
    with pytest.raises(FmaeError, match="no pixel cache there"):
        choose_cache({**cfg, "data_cache": str(tmp_path / "nowhere")}, root, {"train": paths})


def test_cache_folder_rules(tmp_path):
    root, _ = _folder(tmp_path)
    build_cache(root, size=32)
    assert ".fmae-cache" not in " ".join(list_images(root))  # a cache never caches itself
    with pytest.raises(FmaeError, match="holds 32 px images"):
        build_cache(root, out=default_cache_dir(root, 32), size=16)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(FmaeError, match="not a pixel cache"):
        build_cache(root, out=tmp_path / "junk", size=16)
    import pickle

    cache = PixelCache(default_cache_dir(root, 32))
    again = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker gets: no index, reads work
    key = list_images(root)[0]
    assert np.array_equal(again.read(key), cache.read(key)) and again._entries is None


def test_training_from_the_cache_end_to_end_equals_the_plain_path(tmp_path):
    """`fmae data cache`, then the same run through the trainer from the cache (the default) and with
    data_cache = off: with sources at the input size, no erasing noise and PIL's augmentation on both
    paths the model sees the same numbers, so the metrics records are identical. With fast_augment (the
    default) the run trains from OpenCV's augmentation."""
    from fmae.config import load_project
    from fmae.data.synth.writer import SynthOptions, synthesize
    from fmae.registry import get_dataset
    from fmae.run_config import create_run, resolve_run_config
    from fmae.train.trainer import execute

    root = tmp_path / "bp4d"
    synthesize(get_dataset("bp4d"), root, SynthOptions(subjects=6, frames=4, size=32, seed=3))
    made = run_fmae("data", "cache", "bp4d", "--root", root, "--size", "32")
    assert made.returncode == 0, made.stderr
    assert "24 images of 32 px, bilinear (24 decoded, 0 unchanged)" in made.stdout
    assert 'eval_interpolation = "bilinear"' in made.stdout
    project = load_project(cwd=tmp_path)
    common = {"model": "vit_tiny", "batch_size": 8, "epochs": 1, "input_size": 32, "num_workers": 0, "log_every": 1,
              "random_erase_prob": 0.0, "blr": 0.05, "device": "cpu"}

    def records(data_cache: str, fast_augment: bool = False) -> tuple[list[dict], str]:
        resolved = resolve_run_config(project, "bp4d", fold=1, root=root, labels=root / "labels.jsonl",
                                      cli={**common, "data_cache": data_cache, "fast_augment": fast_augment})
        run = create_run(tmp_path / f"{data_cache}-{fast_augment}", resolved)
        assert execute(run.path, quiet=True) == 0
        drop = {"t", "seconds", "images_per_s"}
        lines = (run.path / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines], \
            (run.path / "train.log").read_text()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is quickest (and on a busy CPU by far)
    try:
        fast, fast_log = records("auto")
        plain, plain_log = records("off")
        opencv, opencv_log = records("auto", fast_augment=True)
    finally:
        torch.set_num_threads(threads)
    assert "data: pixel cache" in fast_log and "data: pixel cache" not in plain_log
    assert "data: crop, flip and RandAugment in OpenCV" in opencv_log and "OpenCV" not in fast_log
    assert [r["split"] for r in fast] == ["train", "train", "train_epoch", "test"] and fast == plain
    assert [r["split"] for r in opencv] == [r["split"] for r in plain] and opencv != plain
    assert all(np.isfinite(r["loss"]) for r in opencv if "loss" in r)


def test_data_cache_of_an_unknown_name_is_one_line():
    made = run_fmae("data", "cache", "nowhere-dataset")
    assert_one_line_error(made, "nowhere-dataset: not a benchmark name")


# --- attention and optimizer -----------------------------------------------------------------------

def test_fused_and_unfused_attention_compute_the_same_function():
    from fmae.models.encoders import create_encoder, set_fused_attn
    from fmae.models.heads import FineTuneModel

    torch.manual_seed(0)
    model = FineTuneModel(create_encoder("vit_tiny", img_size=32), 12).eval()
    x = torch.randn(4, 3, 32, 32)
    outs, grads = [], []
    for fused in (True, False):
        assert set_fused_attn(model, fused) == 4  # every block's attention
        model.zero_grad()
        logits, _ = model(x)
        logits.square().sum().backward()
        outs.append(logits.detach())
        grads.append(model.encoder.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_fused_and_per_parameter_adamw_take_the_same_steps():
    from fmae.train.optim import make_optimizer

    params = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
        opt = make_optimizer(model, {"weight_decay": 0.05, "layer_decay": 1.0, "fused_optimizer": fused}, 0,
                             torch.device("cpu"))
        assert opt.defaults["foreach"] is fused and not opt.defaults["fused"]
        for g in opt.param_groups:
            g["lr"] = 1e-2
        for step in range(5):
            x = torch.randn(32, 8, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        params[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(params[True], params[False], rtol=1e-6, atol=1e-7)


def test_fast_path_switches_are_config_keys(tmp_path):
    from fmae.config import load_project
    from fmae.run_config import resolve_run_config

    project = load_project(cwd=tmp_path)
    values = resolve_run_config(project, "bp4d", fold=1, root=tmp_path, labels=tmp_path / "l.jsonl",
                                generate=False).values
    assert (values["fused_attn"], values["fused_optimizer"], values["data_cache"], values["fast_augment"]) == \
        (True, True, "auto", True)
    cli = {"fused_attn": False, "fused_optimizer": False, "data_cache": "caches/bp4d", "fast_augment": False}
    values = resolve_run_config(project, "bp4d", fold=1, root=tmp_path, labels=tmp_path / "l.jsonl",
                                generate=False, cli=cli).values
    assert values["data_cache"] == str(Path("caches/bp4d").resolve())  # a folder is made absolute
    assert values["fast_augment"] is False
    with pytest.raises(FmaeError, match="fused_attn must be true or false"):
        resolve_run_config(project, "bp4d", fold=1, root=tmp_path, generate=False, cli={"fused_attn": "yes"})


def test_a_loader_worker_draws_the_same_augmentation_as_the_main_process(tmp_path):
    """In a worker, seeded_transform only seeds the generators (no save/restore): same items."""
    root, paths = _folder(tmp_path, side=40, square=True)
    build_cache(root, size=40)
    plain, fast = _sets(root, paths, _cfg(40), train=True)
    for data in (plain, fast):
        data.epoch = 1
        batches = []
        for workers in (0, 1):
            x, _, _ = next(iter(DataLoader(data, batch_size=len(data), shuffle=False, num_workers=workers)))
            batches.append(data.to_device(x, torch.device("cpu")))
        assert torch.equal(batches[0], batches[1])
