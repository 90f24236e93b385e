"""One LMDB environment in a folder (DST/data.mdb, DST/lock.mdb), as the image stores (`image_store.py`,
`store_pack.py`) and the pixel cache (`pixel_cache.py`) both use it.

Both write `__meta__` (JSON) first and `__index__` (JSON) in their last transaction, so a reader sees a
complete folder or none. Writing goes through `Writer`, which grows the map when a transaction fills it
and runs the transaction again. Reading goes through `SharedReader`.

py-lmdb refuses to open one environment twice in a process, so every reader of a folder in this process
shares one read-only, lock-free handle. A forked child (a DataLoader worker) inherits the parent's
handles: it closes its copy (which leaves the parent's open) and opens its own.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import lmdb

from fmae.data.image_decode import reason
from fmae.errors import FmaeError

META_KEY = b"__meta__"
INDEX_KEY = b"__index__"
DEFAULT_MAP_SIZE = 1 << 30  # grown by doubling on MapFullError; data.mdb only takes what is written


def is_store(path: Path) -> bool:
    """A folder holding an LMDB environment (an image store or a pixel cache); says nothing of its content."""
    path = Path(path)
    return path.is_dir() and (path / "data.mdb").is_file()


def utc_now() -> str:
    """The time stamp `__meta__` and `__index__` carry."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_readonly(path: Path) -> lmdb.Environment:
    """A private read-only handle (for a check before writing; readers share theirs through `reader`)."""
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=2048,
                     subdir=True, create=False)


def read_json(txn, key: bytes, where: str) -> dict | None:
    """The JSON object under `key` (None when absent); damaged JSON is one FmaeError naming `where`."""
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


def items_under(txn, prefix: str, values: bool = True) -> Iterator[tuple[str, bytes | None]]:
    """(key, value) of every entry whose key starts with `prefix`, in key order (value None without values)."""
    p = prefix.encode("utf-8")
    cur = txn.cursor()
    if not cur.set_range(p):
        return
    for k, v in (cur.iternext() if values else ((k, None) for k in cur.iternext(keys=True, values=False))):
        k = bytes(k)
        if not k.startswith(p):
            break
        yield k.decode("utf-8"), (bytes(v) if values else None)


def probe(out: Path, what: str, *, with_index: bool) -> tuple[dict | None, dict | None, int]:
    """(`__meta__`, `__index__` or None, entry count) of the environment at `out`, read before a Writer
    opens it (this process's read handles on it are closed first: LMDB allows one per environment)."""
    release_readers(out)
    try:
        env = open_readonly(out)
    except lmdb.Error as e:
        raise FmaeError(f"--out {out}: not {what} ({reason(e)}) — give a new folder") from None
    try:
        with env.begin() as txn:
            meta = read_json(txn, META_KEY, str(out))
            index = read_json(txn, INDEX_KEY, str(out)) if with_index else None
        return meta, index, env.stat()["entries"]
    finally:
        env.close()


class Writer:
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


# --- the shared read handles --------------------------------------------------------------------------

_READERS: dict[tuple, tuple[int, lmdb.Environment]] = {}
_READERS_LOCK = threading.Lock()
_generation = 0  # bumped when handles are released, so SharedReaders drop the ones they hold


def _folder_id(path: Path) -> tuple:
    folder = Path(path).resolve()
    st = (folder / "data.mdb").stat()
    return (str(folder), st.st_dev, st.st_ino)


def reader(path: Path) -> lmdb.Environment:
    """This process's shared read-only handle on the environment at `path` (opened on first use)."""
    pid = os.getpid()
    with _READERS_LOCK:
        try:
            key = _folder_id(path)
        except OSError as e:
            raise FmaeError(f"{path}: cannot open the image store ({e.strerror or e})") from None
        hit = _READERS.get(key)
        if hit is not None and hit[0] == pid:
            return hit[1]
        if hit is not None:
            hit[1].close()  # the parent's handle, inherited through fork
            del _READERS[key]
        try:
            env = open_readonly(Path(path))
        except lmdb.Error as e:
            raise FmaeError(f"{path}: not an fmae image store ({reason(e)}) — pack one with "
                            "`fmae data lmdb`") from None
        _READERS[key] = (pid, env)
        return env


def release_readers(path: Path | None = None) -> None:
    """Close this process's read handles (of one folder, or all): before writing to it, or to free the
    address space. SharedReaders reopen lazily."""
    global _generation
    folder = str(Path(path).resolve()) if path is not None else None
    with _READERS_LOCK:
        for key in [k for k in _READERS if folder is None or k[0] == folder]:
            _pid, env = _READERS.pop(key)
            env.close()
        _generation += 1


class SharedReader:
    """A reader of the environment at `self.path` that holds the shared handle while it stays good (same
    process, no `release_readers` since). Pickles without the handle, so a DataLoader worker reopens it."""

    path: Path
    _env: lmdb.Environment | None = None
    _env_of: tuple[int, int] | None = None  # (pid, generation) the handle is good for

    def environment(self) -> lmdb.Environment:
        now = (os.getpid(), _generation)
        if self._env is None or self._env_of != now:
            self._env = reader(self.path)
            self._env_of = now
        return self._env

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_env=None, _env_of=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
