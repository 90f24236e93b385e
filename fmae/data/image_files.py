"""Which files are images, and listing them: the facts the folder readers, the image stores, the pixel
cache, `fmae prepare` and `fmae predict` share. Torch-free (numpy and Pillow are not needed either)."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def is_image_name(name: str) -> bool:
    """An image by its suffix (any case), not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def suffix_list() -> str:
    """The suffixes looked for, for messages: '.bmp, .jpeg, …'."""
    return ", ".join(sorted(IMAGE_SUFFIXES))


def list_images(folder: Path) -> list[str]:
    """Image files under `folder` (recursive, by suffix, hidden files and folders left out), as sorted
    POSIX paths relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        found.extend((rel / name).as_posix() for name in filenames if is_image_name(name))
    found.sort()
    return found
