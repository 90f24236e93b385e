"""The fast data path: datasets read from a pixel cache, uint8 batches, and the step that finishes each
batch on the device — the engine's default whenever a cache covers a run's images (`data_cache`).

A plain `ImageSet` item is a float tensor that its worker decoded from a JPEG, augmented, converted and
normalised. A `CachedImageSet` item is [3, H, W] uint8 pixels read from the cache
(`fmae.data.pixel_cache`), augmented in the worker with the same per-item seed — by OpenCV versions of
timm's ops that draw the same random numbers (`fmae.data.torch.fast_augment`; `fast_augment = false`: by the
same PIL transforms). Batches travel as uint8 (a quarter of the bytes) and `to_device` converts, normalises and erases
on the device:

- evaluation: the cache holds exactly what the eval transform's resize makes of each file, and
  `to_device` repeats ToTensor's and Normalize's arithmetic, so the model sees the same numbers;
- training: crop, flip and RandAugment draw the same random numbers as on the plain path, so each image
  gets the same crop box, flip, ops and magnitudes; with `fast_augment = false` and a cache whose size is
  the source images' own the augmented pixels are identical (from larger sources the crop starts from the
  resized image instead of the file; OpenCV's interpolation differs by a level or two). Erasing rectangles are drawn in the worker exactly
  as timm's RandomErasing draws them — the same rectangles — and filled on the device with normal noise
  from a generator seeded per item (the same distribution, other samples; still a function of
  seed, epoch and index, so resume stays exact).

On the CPU the finish runs in numpy on one thread (normalisation by a 256-entry table per channel, which
the same float32 operations filled, so the same numbers): torch's thread pool makes each small operation
wait for every core, which on a busy machine costs tens of milliseconds per operation.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

from fmae.data.torch.datasets import ImageSet, item_seed, seeded_transform
from fmae.data.torch.fast_augment import fast_pipeline
from fmae.data.lmdb_env import is_store
from fmae.data.pixel_cache import PixelCache, default_cache_dir, format1_cache_dir
from fmae.data.torch.transforms import eval_interpolation, eval_transform, train_parts, train_transform
from fmae.run_spec import Augment, Data, Identity, section_of
from fmae.errors import FmaeError

log = logging.getLogger("fmae.train")

DATA_CACHE_CHOICES = ("auto", "off")  # or the path of a cache folder
_NOISE_SALT = 0x5DEECE66D  # the erasing noise's seed differs from the item's augmentation seed


def _planes(pixels: np.ndarray) -> torch.Tensor:
    """[H, W, 3] → [3, H, W] uint8, in the worker: the main process's finish then reads whole planes.
    OpenCV's split: 2.5x numpy's copy of the transposed view (~40 µs at 224 px, the eval worker's main cost)."""
    return torch.from_numpy(np.stack(cv2.split(pixels)))


def erase_boxes(eraser: RandomErasing, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """The rectangles (top, left, h, w) timm's RandomErasing._erase would fill, drawn from python's
    `random` in the same order and amounts (its fills draw only from torch's RNG)."""
    if random.random() > eraser.probability:
        return []
    area = height * width
    count = eraser.min_count if eraser.min_count == eraser.max_count else \
        random.randint(eraser.min_count, eraser.max_count)
    boxes = []
    for _ in range(count):
        for _attempt in range(10):
            target_area = random.uniform(eraser.min_area, eraser.max_area) * area / count
            aspect_ratio = math.exp(random.uniform(*eraser.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < width and h < height:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                boxes.append((top, left, h, w))
                break
    return boxes


class CachedImageSet(ImageSet):
    """Items from a pixel cache: ({"pixels": [3, H, W] uint8, and for training "erase": [M, 4] int32
    rectangles (h = 0: none), "noise_seed": int64}, target, subject). `to_device` finishes a batch."""

    def __init__(self, paths: Sequence[Path], targets: np.ndarray, cache: PixelCache, keys: Sequence[str],
                 cfg: Mapping[str, Any], *, train: bool, subjects: np.ndarray | None = None, seed: int = 0) -> None:
        a = section_of(Augment, cfg)
        augment, eraser = train_parts(a) if train else (None, None)
        super().__init__(paths, targets, augment, subjects, seed)
        wants_fast = train and a.fast_augment
        self.fast = fast_pipeline(augment) if wants_fast else None
        if wants_fast:
            log.info("data: crop, flip and RandAugment in %s", "OpenCV (fast_augment)" if self.fast is not None else
                     f"PIL (no fast version of auto_augment = {a.auto_augment!r})")
        assert len(keys) == len(paths)
        if cache.size != a.input_size:
            raise FmaeError(f"pixel cache {cache.path} holds {cache.size} px images; input_size is {a.input_size}")
        if cache.interpolation != eval_interpolation(a):
            raise FmaeError(f"pixel cache {cache.path} holds {cache.interpolation}-resized images; "
                            f"eval_interpolation is {eval_interpolation(a)}")
        self.cache, self.keys, self.train, self.eraser = cache, list(keys), train, eraser
        self.max_boxes = eraser.max_count if eraser is not None else 0
        self._consts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._generators: dict[str, torch.Generator] = {}

    def __getstate__(self) -> dict:  # to spawned workers: no device constants, generators or tables
        state = dict(self.__dict__)
        state.update(_consts={}, _generators={})
        state.pop("_table", None)
        return state

    def _augment(self, pixels: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        if self.fast is not None:
            out = self.fast(pixels)
        else:
            out = np.array(self.transform(Image.fromarray(pixels)), dtype=np.uint8)
        return out, erase_boxes(self.eraser, out.shape[0], out.shape[1]) if self.eraser is not None else []

    def __getitem__(self, index: int):
        pixels = self.cache.read(self.keys[index])  # [S, S, 3] uint8
        if not self.train:
            return {"pixels": _planes(pixels)}, self.targets[index], self.subjects[index]
        seed = item_seed(self.seed, self.epoch, index)
        img, boxes = seeded_transform(self._augment, pixels, seed)
        erase = torch.zeros(max(1, self.max_boxes), 4, dtype=torch.int32)
        for j, box in enumerate(boxes):
            erase[j] = torch.tensor(box, dtype=torch.int32)
        item = {"pixels": _planes(img), "erase": erase,
                "noise_seed": torch.tensor(seed ^ _NOISE_SALT, dtype=torch.int64)}
        return item, self.targets[index], self.subjects[index]

    def to_device(self, x: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """uint8 [B, 3, H, W] → normalised float32 [B, 3, H, W] on `device`, erased where drawn."""
        erase = self.train and self.eraser is not None
        if device.type == "cpu":  # numpy, one thread: torch's small ops stall on a busy CPU's thread pool
            out = torch.from_numpy(self._normalise_by_table(x["pixels"]))
            if erase:  # torch's CPU normal_ is serial, and 3x faster than numpy's normals
                self._erase(out, x["erase"], x["noise_seed"])
            return out
        pixels = x["pixels"].to(device, non_blocking=True)
        mean, std = self._normalisation(device)
        img = pixels.to(torch.float32).div(255)  # ToTensor's arithmetic
        img = img.sub_(mean).div_(std)  # Normalize's
        if erase:
            self._erase(img, x["erase"], x["noise_seed"])
        return img

    def _normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._consts:
            self._consts[key] = (torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1),
                                 torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1))
        return self._consts[key]

    def _normalise_by_table(self, pixels: torch.Tensor) -> np.ndarray:
        """On the CPU: each of the 256 values per channel normalised once by the same float32 operations
        (so the same numbers), then looked up — one pass instead of four."""
        if not hasattr(self, "_table"):
            mean, std = self._normalisation(torch.device("cpu"))
            values = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256)
            table = values.to(torch.float32).div(255).sub_(mean).div_(std).reshape(3, 256).numpy()
            self._table = [np.ascontiguousarray(t).reshape(1, 256) for t in table]  # one per channel
        src = pixels.numpy()  # [B, 3, H, W]
        out = np.empty(src.shape, dtype=np.float32)
        for b in range(src.shape[0]):  # OpenCV's LUT on each plane: 3x numpy's gather
            for c in range(3):
                cv2.LUT(src[b, c], self._table[c], dst=out[b, c])
        return out

    def _erase(self, img: torch.Tensor, erase: torch.Tensor, noise_seed: torch.Tensor) -> None:
        mode = self.eraser.mode
        gen = self._generators.setdefault(str(img.device), torch.Generator(device=img.device))
        chans = img.shape[1]
        for b, (boxes, seed) in enumerate(zip(erase.tolist(), noise_seed.tolist())):
            for j, (top, left, h, w) in enumerate(boxes):
                if h <= 0:
                    continue
                gen.manual_seed(seed + j)
                if mode == "pixel":
                    fill = torch.empty((chans, h, w), dtype=img.dtype, device=img.device).normal_(generator=gen)
                elif mode == "rand":
                    fill = torch.empty((chans, 1, 1), dtype=img.dtype, device=img.device).normal_(generator=gen)
                else:
                    fill = torch.zeros((chans, 1, 1), dtype=img.dtype, device=img.device)
                img[b, :, top:top + h, left:left + w] = fill


def image_set(cfg: Mapping[str, Any], paths: Sequence[Path], targets: np.ndarray, *, train: bool,
              subjects: np.ndarray | None = None, cache: PixelCache | None = None,
              keys: Sequence[str] | None = None) -> ImageSet:
    """The split's dataset: from the pixel cache when one was chosen, else decoding the files."""
    seed = section_of(Identity, cfg).seed
    if cache is not None:
        return CachedImageSet(paths, targets, cache, keys, cfg, train=train, subjects=subjects, seed=seed)
    augment = section_of(Augment, cfg)
    tf = train_transform(augment) if train else eval_transform(augment)
    return ImageSet(paths, targets, tf, subjects, seed=seed)


def choose_cache(cfg: Mapping[str, Any], root: Path, splits: Mapping[str, Sequence[Path]]
                 ) -> tuple[PixelCache | None, dict[str, list[str]]]:
    """The pixel cache this run reads (with each split's keys), or (None, {}) for the plain path.

    data_cache = "auto": `<root>/.fmae-cache/<input_size>px-<eval_interpolation>` when it exists and holds
    every image of the run unchanged, else the plain path (saying why); "off": the plain path; a folder:
    that cache, and any gap in it (or another size or interpolation) is an error. The cache's pixels are
    the eval resize's, so its interpolation must be the run's."""
    setting = section_of(Data, cfg).data_cache
    if setting == "off":
        return None, {}
    augment = section_of(Augment, cfg)
    size = augment.input_size
    interp = eval_interpolation(augment)
    auto = setting == "auto"
    folder = default_cache_dir(root, size, interp) if auto else Path(setting)
    old = format1_cache_dir(root, size)
    if auto and interp == "bicubic" and not is_store(folder) and is_store(old):
        folder = old  # a format-1 cache is bicubic: what this run (e.g. an older run.toml) evaluates with
    make = (f"`fmae data cache {section_of(Identity, cfg).dataset} --size {size} --interpolation {interp}"
            f"{'' if auto else f' --out {folder}'}`")
    if not is_store(folder):
        if auto:
            why = (f"; {old} was resized bicubically by an older fmae and this run evaluates {interp} "
                   "(eval_interpolation), so it is not read — delete it" if interp != "bicubic" and is_store(old)
                   else "")
            log.info("data: decoding image files (no pixel cache at %s%s; %s makes one)", folder, why, make)
            return None, {}
        raise FmaeError(f"data_cache = {setting}: no pixel cache there — build it with {make}, or set "
                        "data_cache = \"auto\" or \"off\"")
    cache = PixelCache(folder)
    if cache.size != size:
        raise FmaeError(f"data_cache {folder}: holds {cache.size} px images but input_size is {size} — build one "
                        f"with {make}")
    if cache.interpolation != interp:
        message = (f"data_cache {folder}: holds {cache.interpolation}-resized images but this run evaluates "
                   f"{interp} (eval_interpolation) — build one with {make}")
        if auto:
            log.warning("%s; decoding image files instead", message)
            return None, {}
        raise FmaeError(message)
    keys: dict[str, list[str]] = {}
    for split, paths in splits.items():
        k, missing, stale = cache.keys_for(paths, root)
        if missing or stale:
            what = (f"{len(missing)} of the {split} images are not in it (e.g. {missing[0]})" if missing else
                    f"{len(stale)} {split} images changed since it was built (e.g. {stale[0]})")
            message = f"pixel cache {folder}: {what} — update it with {make}"
            if auto:
                log.warning("%s; decoding image files instead", message)
                return None, {}
            raise FmaeError(message)
        keys[split] = k
    cache.drop_index()
    log.info("data: pixel cache %s (%d images of %d px, %s): uint8 batches, normalisation and erasing on the device",
             folder, len(cache), size, cache.interpolation)
    return cache, keys
