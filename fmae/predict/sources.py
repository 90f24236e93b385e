"""What to predict on: image files, folders of images (recursive), videos, or `-` (paths on stdin), and
their decoding into frames — in a background thread, so the detector never waits for the decoder.

Listing is torch- and OpenCV-free (the app checks a path with it); OpenCV is imported when decoding.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fmae.data.image_files import IMAGE_SUFFIXES
from fmae.errors import FmaeError
from fmae.runs import one_line

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv"})
_MAX_BAD_RUN = 50  # consecutive undecodable frames after which a video is taken to have ended


@dataclass(frozen=True)
class Source:
    path: Path  # resolved
    kind: str  # "image" or "video"
    size: int  # bytes, at listing time (the sidecar records it; --resume checks it)
    mtime: float

    @property
    def key(self) -> str:
        return str(self.path)

    def stamp(self) -> dict:
        return {"path": self.key, "kind": self.kind, "size": self.size, "mtime": self.mtime}


@dataclass
class Frame:
    source: int  # index into the source list
    number: int  # 1-based frame number within its source (OpenFace's convention)
    timestamp: float  # seconds from the container (0.0 for an image)
    rgb: np.ndarray | None  # [H, W, 3] uint8; None = this frame could not be decoded
    detect_rgb: np.ndarray | None = None  # the detector's scaled copy, made in the decode thread


def list_sources(args: Iterable[str], stdin: Iterable[str] | None = None) -> list[Source]:
    """Every source the arguments name, in order (a folder's images sorted by path); a missing path, a
    file of an unsupported format or a folder without images is a one-line FmaeError naming it."""
    found: list[Source] = []
    seen: set[Path] = set()
    for arg in args:
        if arg == "-":
            lines = [line.strip() for line in (stdin if stdin is not None else sys.stdin)]
            names = [line for line in lines if line]
            if not names:
                raise FmaeError("-: no paths on standard input (give one image, video or folder a line)")
            items = [_source_or_folder(Path(n), "-") for n in names]
        else:
            items = [_source_or_folder(Path(arg), arg)]
        for group in items:
            for source in group:
                if source.path not in seen:
                    seen.add(source.path)
                    found.append(source)
    if not found:
        raise FmaeError("no SOURCE given: name images, folders of images, videos, or - for paths on standard input")
    return found


def _source_or_folder(path: Path, given: str) -> list[Source]:
    where = f"{path} (from standard input)" if given == "-" else str(path)
    path = path.expanduser()
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not images:
            raise FmaeError(f"{where}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                            "recursively) — a video must be named on its own")
        return [_source(p, p) for p in images]
    if not path.exists():
        raise FmaeError(f"{where}: no such file or folder — check the path")
    return [_source(path, where)]


def _source(path: Path, where: object) -> Source:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        kind = "image"
    elif suffix in VIDEO_SUFFIXES:
        kind = "video"
    else:
        raise FmaeError(f"{where}: unsupported format '{suffix or 'no suffix'}' — give an image "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}) or a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    try:
        st = path.stat()
    except OSError as e:
        raise FmaeError(f"{where}: cannot read ({e.strerror}) — check its permissions") from None
    if not os.access(path, os.R_OK):
        raise FmaeError(f"{where}: cannot read (permission denied) — check its permissions")
    return Source(path.resolve(), kind, st.st_size, st.st_mtime)


# --- opening and decoding ---------------------------------------------------------------------------

def open_video(path: Path):
    """An opened cv2.VideoCapture and its frame count (the container's; may be an estimate). A file that
    does not open, or whose first frame does not decode, is a one-line FmaeError naming it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise FmaeError(f"{path}: not a readable video (OpenCV could not open it: corrupt, or an unknown codec) — "
                        "check the file plays, or convert it to mp4")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return cap, max(count, 0)


def check_sources(sources: list[Source]) -> list[int]:
    """Expected frames per source; opens every video (first frame) and every image's header first, so a
    corrupt or empty file stops the command before anything is written."""
    from PIL import Image, UnidentifiedImageError

    counts = []
    for s in sources:
        if s.kind == "image":
            try:
                with Image.open(s.path) as img:
                    img.size  # the header parsed
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise FmaeError(f"{s.path}: not a readable image ({_one(e)}) — remove it or replace it") from None
            counts.append(1)
            continue
        if s.size == 0:
            raise FmaeError(f"{s.path}: empty file (0 bytes) — not a video")
        cap, count = open_video(s.path)
        try:
            ok, _ = cap.read()
        finally:
            cap.release()
        if not ok:
            raise FmaeError(f"{s.path}: a video of zero frames (none decodes) — check the file plays")
        counts.append(max(count, 1))
    return counts


def _one(e: BaseException) -> str:
    return one_line(e, None)[:160] or type(e).__name__


def read_image(path: Path) -> np.ndarray | None:
    """[H, W, 3] uint8 RGB, upright as its EXIF orientation says; None when it does not decode."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        return None


def frames_of(sources: list[Source], skip: dict[int, int] | None = None,
              stop: threading.Event | None = None) -> Iterator[Frame]:
    """Every frame of every source in order. `skip[i] = n` passes over source i's first n frames (resume):
    grabbed, not decoded. A frame the codec fails on mid-video is yielded with rgb None; the video ends
    where its container stops giving frames."""
    import cv2

    skip = skip or {}
    for i, s in enumerate(sources):
        done = skip.get(i, 0)
        if s.kind == "image":
            if done < 1:
                yield Frame(i, 1, 0.0, read_image(s.path))
            continue
        cap, count = open_video(s.path)
        step = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or 30.0)
        try:
            number, failed, t = 0, 0, -step
            while stop is None or not stop.is_set():
                if number < done:
                    if not cap.grab():
                        break
                    number += 1
                    t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    continue
                ok, bgr = cap.read()
                if not ok:
                    # A bad packet mid-file fails a read and the next one decodes; past the end every read
                    # fails (and frame counts are estimates), so failures count only once a frame follows.
                    failed += 1
                    if failed > _MAX_BAD_RUN or (count and number + failed > count):
                        break
                    continue
                for _ in range(failed):
                    number += 1
                    t += step
                    yield Frame(i, number, t, None)
                failed = 0
                number += 1
                t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0  # after a read: the presentation time of that frame
                yield Frame(i, number, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()


class Prefetch:
    """Runs an iterator in a daemon thread, `depth` items ahead (OpenCV and Pillow decode without the GIL,
    so decoding overlaps the detector and the model). An exception in the thread is raised here."""

    _END = object()

    def __init__(self, items: Iterator, depth: int = 64) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(items,), daemon=True, name="fmae-decode")
        self._thread.start()

    def _fill(self, items: Iterator) -> None:
        try:
            for item in items:
                while not self.stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self._put_end(self._END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put_end(e)

    def _put_end(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=5)
