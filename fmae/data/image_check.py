"""Find every missing, empty or undecodable image before training starts, not at epoch 7."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from PIL import Image

from fmae.data.problems import Problems
from fmae.errors import FmaeError


def image_problem(path: Path, decode: bool) -> str | None:
    """Why this image cannot be used, or None when it is fine."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "image not found"
    except OSError as e:
        return f"cannot read the image ({e.strerror})"
    if size == 0:
        return "image file is empty (0 bytes)"
    if not decode:
        return None
    try:
        with Image.open(path) as img:
            img.load()  # a full decode: truncated files fail here, not in the header check
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"image cannot be decoded ({str(e).splitlines()[0] or type(e).__name__})"
    return None


# How each format ends: a file cut short (a copy or download that stopped) lacks its last bytes.
_ENDINGS = {".jpg": (b"\xff\xd9",), ".jpeg": (b"\xff\xd9",), ".png": (b"IEND\xaeB`\x82",)}
_TAIL = 4096  # JPEGs may carry padding after their end marker; look for it this far back


def quick_image_problem(path: Path) -> str | None:
    """What `image_problem` finds without decoding every image: missing, empty, or cut short. A JPEG/PNG
    whose last bytes lack the format's end marker is decoded to confirm (some writers pad after it), so
    only files that really cannot be read are reported. Costs a stat and one small read per image."""
    why = image_problem(path, decode=False)
    if why is not None:
        return why
    endings = _ENDINGS.get(path.suffix.lower())
    if endings is None:
        return None
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except OSError as e:
        return f"cannot read the image ({e.strerror})"
    if any(end in tail for end in endings):
        return None
    return image_problem(path, decode=True)


def check_image_files(splits: Mapping[str, Sequence[Path]]) -> None:
    """Before training: every missing, empty or cut-short image (`quick_image_problem`) of every split
    ({"fold 1 train split": paths, …}), all logged, then one FmaeError naming the first and the count —
    instead of a run dying at epoch 7."""
    items = [(p, what) for what, paths in splits.items() for p in paths]
    workers = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        whys = list(pool.map(lambda item: quick_image_problem(item[0]), items, chunksize=256))
    found = [(p, what, why) for (p, what), why in zip(items, whys) if why]
    if not found:
        return
    log = logging.getLogger("fmae.data")
    for p, what, why in found:
        log.error("%s: %s (%s)", p, why, what)
    first, what, why = found[0]
    more = f"; {len(found) - 1} more bad images listed in the log" if len(found) > 1 else ""
    raise FmaeError(f"{first}: {why} in the {what}{more} — fix or remove these files (`fmae data check` "
                    "lists every bad image and label)")


def check_images(
    items: Iterable[tuple[Path, str]],
    problems: Problems,
    decode: bool = True,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Check (image path, where it was listed) pairs; returns how many were checked."""
    items = list(items)
    # Decoding releases the GIL in libjpeg, so a few threads help even on two cores.
    workers = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, ((path, listed_at), why) in enumerate(
            zip(items, pool.map(lambda item: image_problem(item[0], decode), items, chunksize=64))
        ):
            if why:
                problems.error(str(path), f"{why} (listed at {listed_at}) — fix the file or the root folder")
            if progress and (i + 1) % 256 == 0:
                progress(i + 1)
    if progress:
        progress(len(items))
    return len(items)
