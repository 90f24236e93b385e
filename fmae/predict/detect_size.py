"""How large a copy of each frame MTCNN looks at, and the smallest face it finds there: numpy-free, so
`fmae --help` and every other command line start without loading numpy for `fmae predict`'s default."""

from __future__ import annotations

from fmae.errors import FmaeError

MIN_FACE = 20  # MTCNN's own default (facenet-pytorch's MTCNN()): the smallest face, in the copy's pixels
DETECT_SIZE = 180  # the detector's copy of a frame: its shorter side in pixels (0: full resolution)


def check_detect_size(detect_size: int) -> int:
    """--detect-size: 0 (full resolution) or a side that still holds a face MTCNN can find."""
    if detect_size < 0 or 0 < detect_size < 2 * MIN_FACE:
        raise FmaeError(f"--detect-size {detect_size}: give 0 (full resolution) or at least {2 * MIN_FACE} px")
    return int(detect_size)
