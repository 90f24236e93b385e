"""Checking an image store (`fmae data check STORE`): every indexed entry present and decodable as training
decodes it, index and stored keys in agreement."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from PIL import Image

from fmae.data.image_decode import DECODE_ERRORS, ImageRefused, open_image, reason, to_rgb
from fmae.data.image_store import IMG, ImageStore, io_workers
from fmae.data.lmdb_env import items_under
from fmae.data.problems import Problems


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
    except DECODE_ERRORS as e:
        return f"entry cannot be decoded ({reason(e)})"
    return None


def check_store(path: Path, decode: bool = True, progress: Callable[[int], None] | None = None) -> Problems:
    """Every indexed entry present (and, with decode, decodable); index and stored keys agree."""
    store = ImageStore(path)  # raises FmaeError for a path that is not a (finished) store
    problems = Problems()
    where = str(store.path)
    env = store.environment()
    seen: set[str] = set()
    with env.begin() as txn, ThreadPoolExecutor(max_workers=io_workers()) as pool:
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
        stray = [k[len(IMG):] for k, _ in items_under(txn, IMG, values=False) if k[len(IMG):] not in seen]
    for key in stray[:20]:
        problems.warning(f"{where}:{key}", "stored but not in the index (not read by training)")
    if len(stray) > 20:
        problems.warning(where, f"{len(stray) - 20} more entries stored but not in the index")
    counts = sum(store.sources.values())
    if counts != len(store):
        problems.error(where, f"the index lists {len(store)} keys but its sources add up to {counts} — "
                              "pack the store again")
    return problems
