"""Pixel caches: a dataset's images decoded once, resized to a square and stored as raw uint8 RGB in an
LMDB environment (`fmae data cache DATASET`), so training reads pixels instead of decoding JPEGs.

Layout of a cache folder (an LMDB environment, `lmdb_env.py`, opened and grown like the image stores):

    px/<relative path>   size × size × 3 uint8, row-major RGB: what `Image.resize((size, size), FILTER)`
                         makes of the decoded file, FILTER the cache's interpolation (bilinear or bicubic)
                         — the evaluation transform's resize, so evaluation from the cache sees exactly the
                         numbers evaluation from the files sees
    st/<relative path>   "<bytes>:<mtime_ns>" of the source file when it was cached
    __meta__             JSON: format, version, size, interpolation, created, fmae version
    __index__            JSON: format, version, size, interpolation, the root it was made from, and per key
                         its source's [bytes, mtime_ns] — written last, so a reader sees a complete cache
                         or none

Keys are the images' POSIX paths relative to the dataset root. A run uses a cache only when every image
it reads is in it with an unchanged size and modification time (one stat per image, which training
does anyway); rebuilding with the same command recomputes only changed or new files and drops removed
ones. The default place is `<root>/.fmae-cache/<size>px-<interpolation>` (hidden: image listings skip
it), so a run evaluating bilinearly never reads a bicubic cache. Format 1 caches (`<size>px`, from before
the interpolation was a choice) are bicubic; they are read as such, never as bilinear.

No torch here: the command starts fast. `fmae.data.torch.cached` reads caches for training.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from fmae.data.image_decode import decode_rgb
from fmae.data.image_files import list_images
from fmae.data.lmdb_env import (
    DEFAULT_MAP_SIZE, INDEX_KEY, META_KEY, SharedReader, Writer, is_store, items_under, probe, read_json,
    release_readers, utc_now,
)
from fmae.errors import FmaeError
from fmae.recipes import FINETUNE_DEFAULTS

FORMAT = "fmae-pixel-cache"
FORMAT_VERSION = 2  # 2: the interpolation is recorded (1 was always bicubic)
EVAL_INTERPOLATIONS = ("bilinear", "bicubic")  # config eval_interpolation
DEFAULT_INTERPOLATION: str = FINETUNE_DEFAULTS["eval_interpolation"]
_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
PX = "px/"
ST = "st/"
CACHE_FOLDER = ".fmae-cache"
COMMIT_EVERY = 256

Progress = Callable[[int, int], None]  # (images done, images in total)


def default_cache_dir(root: Path, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> Path:
    return Path(root) / CACHE_FOLDER / f"{int(size)}px-{_check_interpolation(interpolation)}"


def format1_cache_dir(root: Path, size: int) -> Path:
    """Where fmae put a (bicubic) cache before the folder said its interpolation."""
    return Path(root) / CACHE_FOLDER / f"{int(size)}px"


def _check_interpolation(name: str) -> str:
    if name not in _FILTERS:
        raise FmaeError(f"interpolation {name!r}: choose one of {', '.join(EVAL_INTERPOLATIONS)}")
    return name


def cache_bytes(images: int, size: int) -> int:
    return images * size * size * 3


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _relative_key(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def resize_square(img: Image.Image, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> Image.Image:
    """torchvision's `Resize((size, size), BILINEAR or BICUBIC)` on a PIL image is exactly this call."""
    return img.resize((size, size), _FILTERS[interpolation])


def _pixels(path: Path, size: int, interpolation: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FmaeError(f"{path}: cannot read the image ({e.strerror or e})") from None
    img = resize_square(decode_rgb(data, str(path)), size, interpolation)
    return np.asarray(img, dtype=np.uint8).tobytes()


# --- building -----------------------------------------------------------------------------------------

@dataclass
class CacheReport:
    out: Path
    size: int
    interpolation: str = DEFAULT_INTERPOLATION
    images: int = 0  # in the cache now
    written: int = 0  # decoded by this run
    unchanged: int = 0  # already cached with the same source size and time
    removed: int = 0  # cached before, file gone now
    seconds: float = 0.0
    bytes: int = 0  # of pixels in the cache
    sources: list[str] = field(default_factory=list)


def _check_out(out: Path, size: int, interpolation: str) -> dict | None:
    """The existing cache's index (None for a new or empty folder); refuse anything else."""
    if out.exists() and not out.is_dir():
        raise FmaeError(f"--out {out}: a file is in the way — give a folder for the cache")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if not is_store(out):
        raise FmaeError(f"--out {out}: folder exists and is not a pixel cache — give a new or empty folder")
    meta, index, _entries = probe(out, "a pixel cache", with_index=True)
    if meta is None or meta.get("format") != FORMAT:
        raise FmaeError(f"--out {out}: an LMDB environment that is not a pixel cache (an image store?) — "
                        "give a new folder")
    if int(meta.get("size", -1)) != size:
        raise FmaeError(f"--out {out}: this cache holds {meta.get('size')} px images; build --size {size} into "
                        "another folder (the default is one folder per size)")
    held = meta.get("interpolation", "bicubic")
    if held != interpolation:
        raise FmaeError(f"--out {out}: this cache holds {held}-resized images; build --interpolation {interpolation} "
                        "into another folder (the default is one folder per size and interpolation)")
    return index or {}


def build_cache(root: Path, out: Path | None = None, size: int = 224, progress: Progress | None = None, *,
                interpolation: str = DEFAULT_INTERPOLATION, threads: int | None = None) -> CacheReport:
    """Decode every image under `root` (recursively, hidden folders skipped), resize it to size × size
    (bilinear or bicubic: the eval_interpolation of the runs that will read it) and store its pixels at
    `out` (default `<root>/.fmae-cache/<size>px-<interpolation>`). Rerunning updates the cache."""
    from fmae import __version__

    start = time.perf_counter()
    root = Path(root)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FmaeError(f"--size {size}: give a positive number of pixels")
    if not root.is_dir():
        raise FmaeError(f"{root}: no such dataset folder")
    _check_interpolation(interpolation)
    out = Path(out) if out is not None else default_cache_dir(root, size, interpolation)
    keys = list_images(root)
    if not keys:
        raise FmaeError(f"{root}: no images in this folder or below")
    index = _check_out(out, size, interpolation)
    report = CacheReport(out=out, size=size, interpolation=interpolation, sources=[str(root.resolve())])
    stats = {k: _stat(root / k) for k in keys}
    writer = Writer(out, max(DEFAULT_MAP_SIZE, cache_bytes(len(keys), size) * 5 // 4 + (64 << 20)))
    try:
        def begin(txn):
            if txn.get(META_KEY) is None:
                meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "size": size,
                        "interpolation": interpolation, "created": utc_now(), "fmae_version": __version__}
                txn.put(META_KEY, json.dumps(meta).encode())
            return {k[len(ST):]: v.decode() for k, v in items_under(txn, ST)}

        have = writer.write(begin)
        todo = [k for k in keys if have.get(k) != _stat_text(stats[k])]
        gone = [k for k in have if k not in stats]
        report.unchanged = len(keys) - len(todo)
        done = report.unchanged
        if progress:
            progress(done, len(keys))
        with ThreadPoolExecutor(max_workers=threads or min(8, (os.cpu_count() or 2))) as pool:
            for lo in range(0, len(todo), COMMIT_EVERY):
                part = todo[lo:lo + COMMIT_EVERY]
                pixels = list(pool.map(lambda k: _pixels(root / k, size, interpolation), part))

                def put(txn, part=part, pixels=pixels):
                    for k, px in zip(part, pixels):
                        txn.put((PX + k).encode("utf-8"), px)
                        txn.put((ST + k).encode("utf-8"), _stat_text(stats[k]).encode())

                writer.write(put)
                done += len(part)
                report.written += len(part)
                if progress:
                    progress(done, len(keys))

        def finish(txn):
            for k in gone:
                txn.delete((PX + k).encode("utf-8"))
                txn.delete((ST + k).encode("utf-8"))
            index = {"format": FORMAT, "format_version": FORMAT_VERSION, "size": size,
                     "interpolation": interpolation, "updated": utc_now(),
                     "fmae_version": __version__, "root": str(root.resolve()),
                     "entries": {k: list(stats[k]) for k in keys}}
            txn.put(INDEX_KEY, json.dumps(index, ensure_ascii=False).encode("utf-8"))

        writer.write(finish)
    finally:
        writer.close()
    release_readers(out)
    report.removed = len(gone)
    report.images = len(keys)
    report.bytes = cache_bytes(len(keys), size)
    report.seconds = time.perf_counter() - start
    return report


def _stat_text(st: tuple[int, int]) -> str:
    return f"{st[0]}:{st[1]}"


# --- reading ------------------------------------------------------------------------------------------

class PixelCache(SharedReader):
    """Read-only view of a cache: `size`, `interpolation`, `keys_for(paths, root)`, `read(key)` → [size, size, 3]
    uint8.

    Picklable for DataLoader workers: each process opens its own read handle (`lmdb_env.SharedReader`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not is_store(self.path):
            raise FmaeError(f"{self.path}: not a pixel cache — build one with `fmae data cache`")
        with self.environment().begin() as txn:
            meta = read_json(txn, META_KEY, str(self.path))
            index = read_json(txn, INDEX_KEY, str(self.path))
        if meta is None or meta.get("format") != FORMAT:
            raise FmaeError(f"{self.path}: not a pixel cache — build one with `fmae data cache`")
        if index is None:
            raise FmaeError(f"{self.path}: unfinished pixel cache (its build was interrupted) — rerun "
                            "`fmae data cache` to finish it")
        if int(index.get("format_version", 0)) > FORMAT_VERSION:
            raise FmaeError(f"{self.path}: cache format {index['format_version']} is newer than this fmae reads "
                            f"({FORMAT_VERSION}) — upgrade fmae")
        self.size = int(index["size"])
        self.interpolation = str(index.get("interpolation", "bicubic"))  # format 1 resized bicubically
        self.root = index.get("root", "")
        self._entries: dict[str, list[int]] | None = index.get("entries", {})
        self.count = len(self._entries)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_entries": None}  # workers read pixels, never the index

    def __len__(self) -> int:
        return self.count

    def keys_for(self, paths: Sequence[Path], root: Path) -> tuple[list[str], list[str], list[str]]:
        """(keys of `paths`, those not cached, those whose file changed since) — one stat per file."""
        if self._entries is None:
            raise RuntimeError("keys_for is for the main process (workers do not carry the index)")
        keys, missing, stale = [], [], []
        for p in paths:
            key = _relative_key(Path(p), root)
            keys.append(key)
            entry = self._entries.get(key)
            if entry is None:
                missing.append(key)
            elif tuple(entry) != _stat(Path(p)):
                stale.append(key)
        return keys, missing, stale

    def drop_index(self) -> None:
        """Forget the per-file index once the keys are chosen (forked workers need not share it)."""
        self._entries = None

    def read(self, key: str) -> np.ndarray:
        """[size, size, 3] uint8 RGB (a writable copy)."""
        with self.environment().begin() as txn:
            data = txn.get((PX + key).encode("utf-8"))
        if data is None or len(data) != self.size * self.size * 3:
            raise FmaeError(f"{self.path}: entry {key} is missing or damaged — rebuild with `fmae data cache`")
        return np.frombuffer(data, dtype=np.uint8).reshape(self.size, self.size, 3).copy()

    def __repr__(self) -> str:
        return f"PixelCache({str(self.path)!r}, {self.count} images of {self.size} px, {self.interpolation})"
