"""Find every missing, empty or undecodable image before training starts, not at epoch 7."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image

from fmae.data.problems import Problems


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
