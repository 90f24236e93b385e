"""Find every missing, empty or undecodable image before training starts, not at epoch 7."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from PIL import UnidentifiedImageError

from fmae.data.image_decode import DECODE_ERRORS, EIGHT_BIT_MODES, ImageRefused, open_image, reason, to_rgb
from fmae.data.problems import Problems
from fmae.errors import FmaeError


def image_problem(path: Path, decode: bool, reduced: bool = False) -> str | None:
    """Why this image cannot be used, or None when it is fine.

    decode=False: only missing or empty. decode=True: opened through fmae's one decode
    (`image_decode`): the pixel limit and the mode from the header, then every pixel, converted as
    training converts it. reduced=True (the check before every run) decodes a JPEG at 1/8 scale in
    the DCT domain — every entropy-coded block is still read, so a damaged header or stream fails as in
    a full decode, in about half the time — and a PNG of an 8-bit mode by `verify` (every chunk's CRC,
    the image data included); other formats decode fully.
    """
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
        with open_image(path) as img:
            if reduced and img.format == "JPEG":
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
            elif reduced and img.format == "PNG" and img.mode in EIGHT_BIT_MODES:
                img.verify()
            else:
                img.load()  # a full decode: truncated files fail here, not in the header check
                to_rgb(img)  # 16-bit, integer and float images are checked as training reads them
    except ImageRefused as e:
        return str(e)
    except UnidentifiedImageError:
        return "image cannot be decoded (not an image: cannot identify the format)"
    except DECODE_ERRORS as e:
        return f"image cannot be decoded ({reason(e)})"
    return None


def check_image_files(splits: Mapping[str, Sequence[Path]]) -> None:
    """Before training: every missing, empty, damaged, too large or unreadable image of every split
    ({"fold 1 train split": paths, …}; `image_problem` with a reduced decode), all logged, then one
    FmaeError naming the first and the count — instead of a run dying at epoch 7."""
    items = [(p, what) for what, paths in splits.items() for p in paths]
    workers = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        whys = list(pool.map(lambda item: image_problem(item[0], decode=True, reduced=True), items, chunksize=256))
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
