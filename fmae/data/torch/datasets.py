"""Torch datasets over the label readers, and the deterministic sampling that makes resume exact.

Augmentation randomness is drawn per item from (seed, epoch, index), not from the process's RNG, so
the images a run sees do not depend on the number of loader workers, on DDP ranks, or on where a
resumed run picks up. The sampler's order is likewise a function of (seed, epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, get_worker_info

from fmae.data.image_decode import decode_rgb, max_pixels as pixel_limit

_MIX = 0x9E3779B97F4A7C15


def item_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * _MIX) % (2**63)


def load_rgb(path: Path, max_pixels: int | None = None) -> Image.Image:
    """8-bit RGB of any image mode, or one FmaeError line naming the image and what to do (a decode
    error, a decompression bomb, a mode fmae cannot read): `fmae.data.image_decode.decode_rgb`."""
    return decode_rgb(path, str(path), limit=max_pixels)


class ImageSet(Dataset):
    """Images with one target row each; `targets` [N, ...] and optional `subjects` [N] identity indices."""

    def __init__(self, paths: Sequence[Path], targets: np.ndarray, transform: Callable,
                 subjects: np.ndarray | None = None, seed: int = 0) -> None:
        assert len(paths) == len(targets)
        self.paths = list(paths)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))
        self.subjects = torch.from_numpy(subjects) if subjects is not None else torch.full((len(paths),), -1)
        self.transform = transform
        self.seed = seed
        self.epoch = 0  # set by the trainer before each epoch's loader is created
        self.max_pixels = pixel_limit()  # the run's limit, carried to workers however they start

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = load_rgb(self.paths[index], self.max_pixels)
        x = seeded_transform(self.transform, img, item_seed(self.seed, self.epoch, index))
        return x, self.targets[index], self.subjects[index]

    def to_device(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A collated batch of items → the model's input on `device` (here already normalised floats;
        `fmae.data.torch.cached.CachedImageSet` finishes uint8 batches on the device instead)."""
        return x.to(device, non_blocking=True)


class SourceImageSet(Dataset):
    """Unlabelled images from image sources (LMDB stores or folders, `fmae.data.image_store`), concatenated:
    what MAE pretraining reads. Items look like ImageSet's so the one loop serves both."""

    def __init__(self, sources: Sequence, transform: Callable, seed: int = 0) -> None:
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.transform, self.seed, self.epoch = transform, seed, 0
        self.targets = torch.zeros(int(self.offsets[-1]), 0)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def image(self, index: int):
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[k].read_image(index - int(self.offsets[k]))

    def __getitem__(self, index: int):
        x = seeded_transform(self.transform, self.image(index), item_seed(self.seed, self.epoch, index))
        return x, self.targets[index], torch.tensor(-1)

    def to_device(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.to(device, non_blocking=True)


def seeded_transform(transform: Callable, img, seed: int):
    """Apply `transform` with its randomness drawn from a private stream seeded by `seed`.

    timm/torchvision transforms draw from python's `random`, numpy's (RandAugment's op choice) and
    torch's global RNGs; the process's RNG states (drop-path, dropout, masking) are left untouched.
    In a DataLoader worker nothing else draws from them, so the generators are only seeded: saving and
    restoring numpy's state alone costs ~0.35 ms an item.
    """
    if get_worker_info() is not None:
        _seed_all(seed)
        return transform(img)
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        _seed_all(seed)
        x = transform(img)
    random.setstate(py_state)
    np.random.set_state(np_state)
    return x


def _seed_all(seed: int) -> None:
    # the CPU generator only: torch.manual_seed also queues a CUDA seeding with a formatted stack trace
    # when CUDA is not initialised (~0.9 ms an item); CPU transforms draw from this one
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class EpochBatches(Sampler[list[int]]):
    """This rank's share of each global batch of a (seed, epoch) permutation; can start mid-epoch.

    A global batch is `batch_size × world_size` consecutive indices of the permutation and rank r takes
    the r-th slice, so N processes with batch B see exactly the batches one process with batch N × B
    sees: DDP's averaged gradient is the 1-process gradient. Without drop_last (evaluation) the last
    global batch is shared as evenly as it goes; a rank may get fewer items, never a duplicate.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool, drop_last: bool,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def batches(self) -> list[list[int]]:
        order, b, w = self._order(), self.batch_size, self.world_size
        out = []
        for start in range(0, len(order), b * w):
            chunk = order[start : start + b * w]
            if len(chunk) < b * w:
                if self.drop_last:
                    break
                per = -(-len(chunk) // w)
                mine = chunk[self.rank * per : (self.rank + 1) * per]
            else:
                mine = chunk[self.rank * b : (self.rank + 1) * b]
            if mine:
                out.append(mine)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.start_batch :])

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.start_batch)


@dataclass
class Splits:
    train: ImageSet
    test: ImageSet
    describe: str  # one line for the log: sizes, subjects
