"""Image stores: image folders packed into one LMDB environment (the paper's Face9M pretraining mix), read.

Layout of a store folder DST (an LMDB environment, `lmdb_env.py`: DST/data.mdb, DST/lock.mdb):

    img/<source>/<relative path>   the encoded bytes as read (JPEG/PNG/…), or a JPEG (quality 95)
                                   when --max-side shrank the image
    sum/<source>/<relative path>   blake2b-128 of the *source file's* bytes (finds duplicates on resume)
    hash/<hex digest>              the key first stored with that content
    __meta__                       JSON: format, version, created, fmae version, max_side
    __index__                      JSON: keys in order, sources, counts, max_side, format version

`__index__` is written in the same transaction as the last images (`store_pack.py`), so a reader sees a
complete store or none: an interrupted pack has `__meta__` but no `__index__`, and rerunning the same
command resumes it. `store_check.py` checks a store entry by entry.

Readers open the environment read-only and lock-free, lazily and once per process, so an `ImageStore`
can be pickled to DataLoader workers (or forked into them) and each worker reopens it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import lmdb
import numpy as np
from PIL import Image

from fmae.data.image_decode import DECODE_ERRORS, ImageRefused, decode_rgb, open_image, reason, to_rgb
from fmae.data.image_files import list_images, suffix_list
from fmae.data.lmdb_env import INDEX_KEY, META_KEY, SharedReader, is_store, read_json, release_readers
from fmae.errors import FmaeError

FORMAT = "fmae-image-store"
FORMAT_VERSION = 1
IMG = "img/"
SUM = "sum/"
HASH = "hash/"


def io_workers() -> int:
    """Threads for reading and decoding files or entries (packing, checking): I/O and Pillow release the GIL."""
    return min(8, (os.cpu_count() or 2) * 2)


def _not_a_store(path: Path) -> FmaeError:
    return FmaeError(f"{path}: not an fmae image store (no __index__) — pack one with `fmae data lmdb`")


# --- plain image folders --------------------------------------------------------------------------------

class ImageFolderList:
    """A plain image folder read like a store: a recursive sorted list of its image files."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FmaeError(f"{self.path}: no such folder")
        self._rel = list_images(self.path)
        if not self._rel:
            raise FmaeError(f"{self.path}: no images in this folder or below "
                            f"(looked for {suffix_list()})")

    def __len__(self) -> int:
        return len(self._rel)

    @property
    def sources(self) -> dict[str, int]:
        return {self.path.resolve().name: len(self._rel)}

    def key(self, i: int) -> str:
        return self._rel[i]

    def file(self, i: int) -> Path:
        return self.path / self._rel[i]

    def read_bytes(self, i: int) -> bytes:
        path = self.file(i)
        try:
            return path.read_bytes()
        except OSError as e:
            raise FmaeError(f"{path}: cannot read the image ({e.strerror or e})") from None

    def read_image(self, i: int) -> Image.Image:
        return decode_rgb(self.read_bytes(i), str(self.file(i)))

    def __repr__(self) -> str:
        return f"ImageFolderList({str(self.path)!r}, {len(self)} images)"


# --- stores ---------------------------------------------------------------------------------------------

class ImageStore(SharedReader):
    """Read-only view of a store: `len(store)`, `key(i)`, `read_bytes(i)`, `read_image(i)` (RGB)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FmaeError(f"{self.path}: no such store folder — pack one with `fmae data lmdb`")
        if not is_store(self.path):
            raise _not_a_store(self.path)
        with self.environment().begin() as txn:
            meta = read_json(txn, META_KEY, str(self.path))
            index = read_json(txn, INDEX_KEY, str(self.path))
        if index is None:
            if meta is not None and meta.get("format") == FORMAT:
                raise FmaeError(f"{self.path}: unfinished fmae image store (no __index__: its pack was "
                                "interrupted) — rerun the same `fmae data lmdb` command to finish it")
            raise _not_a_store(self.path)
        if index.get("format") != FORMAT or not isinstance(index.get("keys"), list):
            raise _not_a_store(self.path)
        if int(index.get("format_version", 0)) > FORMAT_VERSION:
            raise FmaeError(f"{self.path}: store format {index['format_version']} is newer than this fmae "
                            f"reads ({FORMAT_VERSION}) — upgrade fmae")
        self.meta = meta or {}
        self.max_side: int | None = index.get("max_side")
        self.source_info: dict[str, dict] = dict(index.get("sources", {}))
        # Keys live in one bytes blob + offsets (not a list of str): a Face9M-sized index costs two
        # buffers instead of millions of objects, and forked workers share them without copy-on-write.
        encoded = [k.encode("utf-8") for k in index["keys"]]
        self._blob = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(k) for k in encoded], out=self._offsets[1:])

    def close(self) -> None:
        """Close this process's handle on the store (shared by every ImageStore of it); reads reopen it."""
        self._env = None
        release_readers(self.path)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _index(self, i: int) -> int:
        n = len(self)
        j = int(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"image {i} out of range for a store of {n}")
        return j

    def key(self, i: int) -> str:
        j = self._index(i)
        return self._blob[self._offsets[j]:self._offsets[j + 1]].decode("utf-8")

    def keys(self) -> Iterator[str]:
        for j in range(len(self)):
            yield self._blob[self._offsets[j]:self._offsets[j + 1]].decode("utf-8")

    @property
    def sources(self) -> dict[str, int]:
        """Images per source folder name, in store order."""
        return {name: int(info.get("images", 0)) for name, info in self.source_info.items()}

    def read_bytes(self, i: int) -> bytes:
        key = self.key(i)
        try:
            with self.environment().begin() as txn:
                data = txn.get((IMG + key).encode("utf-8"))
        except lmdb.MapResizedError:  # a pack in another process grew the store: map it again
            release_readers(self.path)
            with self.environment().begin() as txn:
                data = txn.get((IMG + key).encode("utf-8"))
        if data is None:
            raise FmaeError(f"{self.path}: entry {key} is in the index but not in the store — "
                            f"run `fmae data check {self.path}`")
        return bytes(data)

    def read_image(self, i: int) -> Image.Image:
        key = self.key(i)
        data = self.read_bytes(i)
        try:
            with open_image(data) as img:  # fmae's one decode (`fmae.data.image_decode`), as for files
                img.load()
                return to_rgb(img)
        except ImageRefused as e:
            raise FmaeError(f"{self.path}: entry {key}: {e}") from None
        except DECODE_ERRORS as e:
            raise FmaeError(f"{self.path}: entry {key} cannot be decoded ({reason(e)}) — "
                            f"run `fmae data check {self.path}`") from None

    def __repr__(self) -> str:
        return f"ImageStore({str(self.path)!r}, {len(self)} images)"


def open_image_source(path: Path) -> ImageStore | ImageFolderList:
    """A store folder (or its data.mdb) → ImageStore; any other folder → ImageFolderList of its images."""
    path = Path(path)
    if path.is_file() and path.name == "data.mdb":
        path = path.parent
    if not path.exists():
        raise FmaeError(f"{path}: no such store or image folder")
    if not path.is_dir():
        raise FmaeError(f"{path}: not a folder — give an image store (from `fmae data lmdb`) or an image folder")
    if is_store(path):
        return ImageStore(path)
    return ImageFolderList(path)
