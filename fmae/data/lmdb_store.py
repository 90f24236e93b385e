"""Image stores: image folders packed into one LMDB environment (the paper's Face9M pretraining mix).

Layout of a store folder DST (an LMDB environment: DST/data.mdb, DST/lock.mdb):

    img/<source>/<relative path>   the encoded bytes as read (JPEG/PNG/…), or a JPEG (quality 95)
                                   when --max-side shrank the image
    sum/<source>/<relative path>   blake2b-128 of the *source file's* bytes (finds duplicates on resume)
    hash/<hex digest>              the key first stored with that content
    __meta__                       JSON: format, version, created, fmae version, max_side
    __index__                      JSON: keys in order, sources, counts, max_side, format version

`__index__` is written in the same transaction as the last images, so a reader sees a complete store
or none: an interrupted pack has `__meta__` but no `__index__`, and rerunning the same command resumes
it (keys already present are skipped without reading their files).

Readers open the environment read-only and lock-free, lazily and once per process, so an `ImageStore`
can be pickled to DataLoader workers (or forked into them) and each worker reopens it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import lmdb
import numpy as np
from PIL import Image

from fmae.data.fer_folders import IMAGE_SUFFIXES
from fmae.data.image_decode import ImageRefused, decode_rgb, open_image, to_rgb
from fmae.data.problems import Problems
from fmae.errors import FmaeError

FORMAT = "fmae-image-store"
FORMAT_VERSION = 1
META_KEY = b"__meta__"
INDEX_KEY = b"__index__"
IMG = "img/"
SUM = "sum/"
HASH = "hash/"
JPEG_QUALITY = 95
COMMIT_EVERY = 500
COMMIT_BYTES = 256 << 20  # also commit when a batch holds this much, whatever its count
DEFAULT_MAP_SIZE = 1 << 30  # grown by doubling on MapFullError; data.mdb only takes what is written

Progress = Callable[[int, int], None]  # (files done, files in total)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _workers() -> int:
    return min(8, (os.cpu_count() or 2) * 2)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def is_store(path: Path) -> bool:
    """A folder holding an LMDB environment (what `fmae data lmdb` writes); says nothing of its content."""
    path = Path(path)
    return path.is_dir() and (path / "data.mdb").is_file()


def _not_a_store(path: Path) -> FmaeError:
    return FmaeError(f"{path}: not an fmae image store (no __index__) — pack one with `fmae data lmdb`")


# --- walking image folders ----------------------------------------------------------------------------

def list_images(folder: Path) -> list[str]:
    """Image files under `folder` (recursive, by suffix, hidden files and folders left out), as sorted
    POSIX paths relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append((rel / name).as_posix())
    found.sort()
    return found


def _decode_rgb(data: bytes, where: str) -> Image.Image:
    """fmae's one decode (`fmae.data.image_decode`): the plain path, stores and the pixel cache agree."""
    return decode_rgb(data, where)


class ImageFolderList:
    """A plain image folder read like a store: a recursive sorted list of its image files."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FmaeError(f"{self.path}: no such folder")
        self._rel = list_images(self.path)
        if not self._rel:
            raise FmaeError(f"{self.path}: no images in this folder or below "
                            f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")

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
        return _decode_rgb(self.read_bytes(i), str(self.file(i)))

    def __repr__(self) -> str:
        return f"ImageFolderList({str(self.path)!r}, {len(self)} images)"


# --- the reader ---------------------------------------------------------------------------------------

def _open_readonly(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=2048,
                     subdir=True, create=False)


# py-lmdb refuses to open one environment twice in a process, so every reader of a store in this process
# shares one read-only handle. A forked child (a DataLoader worker) inherits the parent's handles: it
# closes its copy (which leaves the parent's open) and opens its own.
_READERS: dict[tuple, tuple[int, lmdb.Environment]] = {}
_READERS_LOCK = threading.Lock()
_generation = 0  # bumped when handles are released, so ImageStores drop the ones they hold


def _store_id(path: Path) -> tuple:
    folder = Path(path).resolve()
    st = (folder / "data.mdb").stat()
    return (str(folder), st.st_dev, st.st_ino)


def _reader(path: Path) -> lmdb.Environment:
    pid = os.getpid()
    with _READERS_LOCK:
        try:
            key = _store_id(path)
        except OSError as e:
            raise FmaeError(f"{path}: cannot open the image store ({e.strerror or e})") from None
        hit = _READERS.get(key)
        if hit is not None and hit[0] == pid:
            return hit[1]
        if hit is not None:
            hit[1].close()  # the parent's handle, inherited through fork
            del _READERS[key]
        try:
            env = _open_readonly(Path(path))
        except lmdb.Error as e:
            raise FmaeError(f"{path}: not an fmae image store ({_reason(e)}) — pack one with "
                            "`fmae data lmdb`") from None
        _READERS[key] = (pid, env)
        return env


def release_readers(path: Path | None = None) -> None:
    """Close this process's read handles (of one store, or all): before writing to a store, or to free
    the address space. ImageStores reopen lazily."""
    global _generation
    folder = str(Path(path).resolve()) if path is not None else None
    with _READERS_LOCK:
        for key in [k for k in _READERS if folder is None or k[0] == folder]:
            _pid, env = _READERS.pop(key)
            env.close()
        _generation += 1


def _read_json(txn, key: bytes, where: str) -> dict | None:
    raw = txn.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FmaeError(f"{where}: its {key.decode()} entry is not valid JSON ({e}) — pack the store again") from None
    if not isinstance(value, dict):
        raise FmaeError(f"{where}: its {key.decode()} entry is not a JSON object — pack the store again")
    return value


class ImageStore:
    """Read-only view of a store: `len(store)`, `key(i)`, `read_bytes(i)`, `read_image(i)` (RGB)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._env: lmdb.Environment | None = None
        self._env_of: tuple[int, int] | None = None  # (pid, generation) the handle is good for
        if not self.path.exists():
            raise FmaeError(f"{self.path}: no such store folder — pack one with `fmae data lmdb`")
        if not is_store(self.path):
            raise _not_a_store(self.path)
        with self._environment().begin() as txn:
            meta = _read_json(txn, META_KEY, str(self.path))
            index = _read_json(txn, INDEX_KEY, str(self.path))
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

    # pickling for DataLoader workers: never the environment, only where it is
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_env"] = None
        state["_env_of"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _environment(self) -> lmdb.Environment:
        now = (os.getpid(), _generation)
        if self._env is None or self._env_of != now:
            self._env = _reader(self.path)
            self._env_of = now
        return self._env

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
            with self._environment().begin() as txn:
                data = txn.get((IMG + key).encode("utf-8"))
        except lmdb.MapResizedError:  # a pack in another process grew the store: map it again
            release_readers(self.path)
            with self._environment().begin() as txn:
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
        except _DECODE_ERRORS as e:
            raise FmaeError(f"{self.path}: entry {key} cannot be decoded ({_reason(e)}) — "
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


# --- packing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Duplicate:
    path: Path  # the file left out
    key: str  # the key it would have had
    of_key: str  # the key stored with the same content
    of_path: Path | None  # that file, when it is in this run's sources

    def report_line(self) -> str:
        first = str(self.of_path) if self.of_path else f"store key {self.of_key}"
        return f"warning: {self.path}: duplicate of {first} (identical bytes) — stored once, as {self.of_key}"


@dataclass(frozen=True)
class Unreadable:
    path: Path
    reason: str

    def report_line(self) -> str:
        return f"problem: {self.path}: {self.reason} — not stored"


@dataclass
class PackReport:
    out: Path
    files: int = 0  # image files found in the sources
    stored: int = 0  # written by this run
    already_present: int = 0  # skipped: stored by an earlier (interrupted) run
    removed: int = 0  # entries of these sources whose file is gone, taken out of the store
    images: int = 0  # entries in the store's index now
    bytes_written: int = 0
    seconds: float = 0.0
    max_side: int | None = None
    duplicates: list[Duplicate] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)  # this run's sources: images each in the index


@dataclass
class _Loaded:
    key: str
    path: Path
    data: bytes | None = None
    digest: bytes | None = None
    reason: str | None = None


def _load(key: str, path: Path, max_side: int | None, max_key: int) -> _Loaded:
    item = _Loaded(key, path)
    if len((IMG + key).encode("utf-8")) > max_key:
        item.reason = f"path too long for a store key ({len((IMG + key).encode())} bytes > {max_key})"
        return item
    try:
        data = path.read_bytes()
    except OSError as e:
        item.reason = f"cannot read the file ({e.strerror or e})"
        return item
    if not data:
        item.reason = "image file is empty (0 bytes)"
        return item
    item.digest = hashlib.blake2b(data, digest_size=16).digest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode: truncated files fail here, not in the header check
            if max_side and max(img.size) > max_side:
                scale = max_side / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                small = to_rgb(img).resize(size, Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                small.save(buf, format="JPEG", quality=JPEG_QUALITY)
                data = buf.getvalue()
    except Image.UnidentifiedImageError:
        item.reason = "not an image (cannot identify the format)"
        return item
    except _DECODE_ERRORS as e:
        item.reason = f"image cannot be decoded ({_reason(e)})"
        return item
    item.data = data
    return item


def _source_names(sources: list[Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise FmaeError(f"{src}: no such source folder")
        if not src.is_dir():
            raise FmaeError(f"{src}: not a folder — give folders of images")
        name = src.resolve().name
        if not name:
            raise FmaeError(f"{src}: a source needs a folder name (its keys start with it)")
        if name in names:
            raise FmaeError(f"{src} and {names[name]} are both named '{name}': store keys start with the "
                            "source folder's name — rename one, or pack them into separate stores")
        names[name] = src
    if not names:
        raise FmaeError("no source folders given")
    return names


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FmaeError(f"--out {out}: a file is in the way — give a folder for the store")
    if out.is_dir() and not is_store(out) and any(out.iterdir()):
        raise FmaeError(f"--out {out}: folder exists and is not an image store — give a new or empty folder")


def _cursor_keys(txn, prefix: str) -> Iterator[str]:
    p = prefix.encode("utf-8")
    cur = txn.cursor()
    if not cur.set_range(p):
        return
    for k in cur.iternext(keys=True, values=False):
        k = bytes(k)
        if not k.startswith(p):
            break
        yield k.decode("utf-8")[len(IMG):] if prefix.startswith(IMG) else k.decode("utf-8")


class _Writer:
    """A write environment that grows its map when full and retries the transaction."""

    def __init__(self, out: Path, map_size: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        existing = (out / "data.mdb").stat().st_size if (out / "data.mdb").exists() else 0
        self.map_size = max(map_size, 2 * existing)
        self.env = lmdb.open(str(out), map_size=self.map_size, subdir=True, readahead=False, meminit=False)

    def write(self, fn: Callable) -> object:
        """Run fn(txn) in one write transaction; on MapFullError abort, double the map, run it again."""
        while True:
            txn = self.env.begin(write=True)
            try:
                result = fn(txn)
                txn.commit()
                return result
            except lmdb.MapFullError:
                txn.abort()
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
            except BaseException:
                txn.abort()
                raise

    def close(self) -> None:
        self.env.close()


def pack(sources: list[Path], out: Path, max_side: int | None = None, progress: Progress | None = None, *,
         commit_every: int = COMMIT_EVERY, map_size: int = DEFAULT_MAP_SIZE) -> PackReport:
    """Pack image folders into the store at `out` (created, or resumed/extended when it exists)."""
    from fmae import __version__

    start = time.perf_counter()
    out = Path(out)
    if max_side is not None and max_side < 1:
        raise FmaeError(f"--max-side {max_side}: give a positive number of pixels")
    names = _source_names(list(sources))
    _check_out(out)
    wanted: dict[str, list[str]] = {}
    for name, src in names.items():
        rel = list_images(src)
        if not rel:
            raise FmaeError(f"{src}: no images in this folder or below (looked for "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        wanted[name] = [f"{name}/{r}" for r in rel]
    total = sum(map(len, wanted.values()))
    report = PackReport(out=out, files=total, max_side=max_side)

    def file_of(key: str) -> Path | None:  # paths made when needed: a Face9M walk holds only key strings
        name, rel = key.split("/", 1)
        return names[name] / rel if name in names else None

    if out.is_dir():
        release_readers(out)  # this process's read handles: LMDB allows one handle per environment
    if out.is_dir() and is_store(out):
        try:
            probe = _open_readonly(out)
        except lmdb.Error as e:
            raise FmaeError(f"--out {out}: not an fmae image store ({_reason(e)}) — give a new folder") from None
        try:
            with probe.begin() as txn:
                meta = _read_json(txn, META_KEY, str(out))
            empty = probe.stat()["entries"] == 0  # a pack stopped before its first commit
        finally:
            probe.close()
        if empty:
            meta = {"format": FORMAT, "max_side": max_side}
        if meta is None or meta.get("format") != FORMAT:
            raise FmaeError(f"--out {out}: an LMDB environment that is not an fmae image store — give a new folder")
        if meta.get("max_side") != max_side:
            had = f"--max-side {meta['max_side']}" if meta.get("max_side") else "no --max-side"
            raise FmaeError(f"--out {out}: this store was packed with {had}; pack with the same setting "
                            "or into a new folder")

    writer = _Writer(out, map_size)
    try:
        env = writer.env
        max_key = env.max_key_size()

        def begin(txn):
            if txn.get(META_KEY) is None:
                meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": _now(),
                        "fmae_version": __version__, "max_side": max_side}
                txn.put(META_KEY, json.dumps(meta).encode())
            # Entries of these sources whose file is gone: unlink their content hash now (so a file with
            # the same bytes is stored, not called a duplicate of them); drop the images with the index.
            present, orphans = set(), []
            for name in names:
                wanted_set = set(wanted[name])
                for key in _cursor_keys(txn, f"{IMG}{name}/"):
                    if key in wanted_set:
                        present.add(key)
                    else:
                        orphans.append(key)
            for key in orphans:
                digest = txn.get((SUM + key).encode())
                if digest is not None:
                    hkey = (HASH + bytes(digest).hex()).encode()
                    if bytes(txn.get(hkey) or b"") == key.encode():
                        txn.delete(hkey)
                    txn.delete((SUM + key).encode())
            return present, orphans

        present, orphans = writer.write(begin)
        todo = [k for keys in wanted.values() for k in keys if k not in present]
        report.already_present = total - len(todo)
        done = report.already_present
        if progress:
            progress(done, total)

        stored_keys: set[str] = set(present)

        def flush(batch: list[_Loaded]) -> None:
            def put_all(txn):
                dups, bad, keys, nbytes = [], [], [], 0
                for item in batch:
                    if item.data is None:
                        bad.append(Unreadable(item.path, item.reason or "unreadable"))
                        continue
                    hkey = (HASH + item.digest.hex()).encode()
                    first = txn.get(hkey)
                    if first is not None and bytes(first).decode() != item.key:
                        of = bytes(first).decode()
                        dups.append(Duplicate(item.path, item.key, of, file_of(of)))
                        continue
                    txn.put((IMG + item.key).encode(), item.data)
                    txn.put((SUM + item.key).encode(), item.digest)
                    txn.put(hkey, item.key.encode())
                    keys.append(item.key)
                    nbytes += len(item.data)
                return dups, bad, keys, nbytes

            dups, bad, keys, nbytes = writer.write(put_all)
            report.duplicates += dups
            report.unreadable += bad
            report.stored += len(keys)
            report.bytes_written += nbytes
            stored_keys.update(keys)

        batch: list[_Loaded] = []
        batch_bytes = 0
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            chunk = max(1, commit_every)
            for lo in range(0, len(todo), chunk):
                part = todo[lo:lo + chunk]
                for item in pool.map(lambda key: _load(key, file_of(key), max_side, max_key), part):
                    batch.append(item)
                    batch_bytes += len(item.data or b"")
                    done += 1
                    if progress:
                        progress(done, total)
                    if batch_bytes >= COMMIT_BYTES:
                        flush(batch)
                        batch, batch_bytes = [], 0
                if batch:
                    flush(batch)
                    batch, batch_bytes = [], 0

        def finish(txn):
            for key in orphans:
                txn.delete((IMG + key).encode())
            old = _read_json(txn, INDEX_KEY, str(out)) or {}
            groups: dict[str, list[str]] = {}
            for key in old.get("keys", []):
                groups.setdefault(key.split("/", 1)[0], []).append(key)
            info: dict[str, dict] = {n: i for n, i in old.get("sources", {}).items() if n not in names}
            dup_count: dict[str, int] = {}
            for d in report.duplicates:
                dup_count[d.key.split("/", 1)[0]] = dup_count.get(d.key.split("/", 1)[0], 0) + 1
            bad_count: dict[str, int] = {}
            for name, src in names.items():
                keys = [k for k in wanted[name] if k in stored_keys]
                groups[name] = keys
                info[name] = {"path": str(src.resolve()), "images": len(keys),
                              "duplicates": dup_count.get(name, 0), "unreadable": 0}
                report.sources[name] = len(keys)
            for u in report.unreadable:
                for name, src in names.items():
                    if u.path.is_relative_to(src):
                        info[name]["unreadable"] += 1
                        break
            order = list(info)
            all_keys = [k for name in order for k in groups.get(name, [])]
            index = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "updated": _now(),
                "fmae_version": __version__, "max_side": max_side, "sources": {n: info[n] for n in order},
                "counts": {"images": len(all_keys), "duplicates": len(report.duplicates),
                           "unreadable": len(report.unreadable)},
                "keys": all_keys,
            }
            txn.put(INDEX_KEY, json.dumps(index, ensure_ascii=False).encode("utf-8"))
            return len(all_keys)

        report.images = writer.write(finish)
        report.removed = len(orphans)
    finally:
        writer.close()
    report.seconds = time.perf_counter() - start
    return report


# --- checking -----------------------------------------------------------------------------------------

def _entry_problem(data: bytes) -> str | None:
    if not data:
        return "entry is empty (0 bytes)"
    try:
        with open_image(data) as img:  # as training reads it: the pixel limit, the mode, every pixel
            img.load()
            to_rgb(img)
    except ImageRefused as e:
        return f"entry refused: {e}"
    except Image.UnidentifiedImageError:
        return "entry is not an image (cannot identify the format)"
    except _DECODE_ERRORS as e:
        return f"entry cannot be decoded ({_reason(e)})"
    return None


def check_store(path: Path, decode: bool = True, progress: Callable[[int], None] | None = None) -> Problems:
    """Every indexed entry present (and, with decode, decodable); index and stored keys agree."""
    store = ImageStore(path)  # raises FmaeError for a path that is not a (finished) store
    problems = Problems()
    where = str(store.path)
    env = store._environment()
    seen: set[str] = set()
    with env.begin() as txn, ThreadPoolExecutor(max_workers=_workers()) as pool:
        keys = list(store.keys())
        for lo in range(0, len(keys), 256):
            part = keys[lo:lo + 256]
            datas = []
            for key in part:
                if key in seen:
                    problems.error(f"{where}:{key}", "listed twice in the index — pack the store again")
                seen.add(key)
                raw = txn.get((IMG + key).encode("utf-8"))
                if raw is None:
                    problems.error(f"{where}:{key}", "in the index but not in the store — pack the store again")
                datas.append(None if raw is None else bytes(raw))
            checks = pool.map(lambda d: None if d is None else (_entry_problem(d) if decode else
                                                                ("entry is empty (0 bytes)" if not d else None)),
                              datas)
            for key, why in zip(part, checks):
                if why:
                    problems.error(f"{where}:{key}", f"{why} — repack its source, or remove the store")
            if progress:
                progress(min(lo + 256, len(keys)))
        stray = [k for k in _cursor_keys(txn, IMG) if k not in seen]
    for key in stray[:20]:
        problems.warning(f"{where}:{key}", "stored but not in the index (not read by training)")
    if len(stray) > 20:
        problems.warning(where, f"{len(stray) - 20} more entries stored but not in the index")
    counts = sum(store.sources.values())
    if counts != len(store):
        problems.error(where, f"the index lists {len(store)} keys but its sources add up to {counts} — "
                              "pack the store again")
    return problems
