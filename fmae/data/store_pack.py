"""Packing image folders into an image store (`fmae data lmdb`; the layout: `image_store.py`).

Resumable: keys already present are skipped without reading their files, and `__index__` is written in
the last transaction. Duplicates (by content hash) and unreadable files are reported, not stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from fmae.data.image_decode import DECODE_ERRORS, ImageRefused, open_image, reason, to_rgb
from fmae.data.image_files import list_images, suffix_list
from fmae.data.image_store import FORMAT, FORMAT_VERSION, HASH, IMG, SUM, io_workers
from fmae.data.lmdb_env import (
    DEFAULT_MAP_SIZE, INDEX_KEY, META_KEY, Writer, is_store, items_under, probe, read_json, utc_now,
)
from fmae.errors import FmaeError

JPEG_QUALITY = 95
COMMIT_EVERY = 500
COMMIT_BYTES = 256 << 20  # also commit when a batch holds this much, whatever its count

Progress = Callable[[int, int], None]  # (files done, files in total)


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
        with open_image(data) as img:  # over [data] max_image_pixels: refused from the header
            img.load()  # a full decode: truncated files fail here, not in the header check
            if max_side and max(img.size) > max_side:
                scale = max_side / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                small = to_rgb(img).resize(size, Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                small.save(buf, format="JPEG", quality=JPEG_QUALITY)
                data = buf.getvalue()
    except ImageRefused as e:
        item.reason = str(e)
        return item
    except Image.UnidentifiedImageError:
        item.reason = "not an image (cannot identify the format)"
        return item
    except DECODE_ERRORS as e:
        item.reason = f"image cannot be decoded ({reason(e)})"
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


def _image_keys(txn, prefix: str) -> list[str]:
    """Keys of the images stored under `prefix` (which starts with img/), without the img/."""
    return [key[len(IMG):] for key, _ in items_under(txn, prefix, values=False)]


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
            raise FmaeError(f"{src}: no images in this folder or below (looked for {suffix_list()})")
        wanted[name] = [f"{name}/{r}" for r in rel]
    total = sum(map(len, wanted.values()))
    report = PackReport(out=out, files=total, max_side=max_side)

    def file_of(key: str) -> Path | None:  # paths made when needed: a Face9M walk holds only key strings
        name, rel = key.split("/", 1)
        return names[name] / rel if name in names else None

    if is_store(out):
        meta, _index, entries = probe(out, "an fmae image store", with_index=False)
        if entries == 0:  # a pack stopped before its first commit
            meta = {"format": FORMAT, "max_side": max_side}
        if meta is None or meta.get("format") != FORMAT:
            raise FmaeError(f"--out {out}: an LMDB environment that is not an fmae image store — give a new folder")
        if meta.get("max_side") != max_side:
            had = f"--max-side {meta['max_side']}" if meta.get("max_side") else "no --max-side"
            raise FmaeError(f"--out {out}: this store was packed with {had}; pack with the same setting "
                            "or into a new folder")

    writer = Writer(out, map_size)
    try:
        env = writer.env
        max_key = env.max_key_size()

        def begin(txn):
            if txn.get(META_KEY) is None:
                meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": utc_now(),
                        "fmae_version": __version__, "max_side": max_side}
                txn.put(META_KEY, json.dumps(meta).encode())
            # Entries of these sources whose file is gone: unlink their content hash now (so a file with
            # the same bytes is stored, not called a duplicate of them); drop the images with the index.
            present, orphans = set(), []
            for name in names:
                wanted_set = set(wanted[name])
                for key in _image_keys(txn, f"{IMG}{name}/"):
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
        with ThreadPoolExecutor(max_workers=io_workers()) as pool:
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
            old = read_json(txn, INDEX_KEY, str(out)) or {}
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
                "format": FORMAT, "format_version": FORMAT_VERSION, "updated": utc_now(),
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
