"""Makes tests/data's media from two photographs whose terms are clear, both shipped in scikit-image's
wheel (skimage/data/, read with Pillow; scikit-image itself is not needed):

- astronaut.png: Eileen Collins, NASA (public domain) -> astronaut.jpg (re-encoded, quality 92)
- camera.png: Lav Varshney's photograph, CC0 -> camera.png (copied unchanged)
- astronaut_pan.mp4: 72 frames of astronaut.png, 640x360 at 30 fps (mp4v): a window that pans and zooms
  across the photo, so the face moves and grows in the frame as a face in a video does.

    .venv/bin/pip download --no-deps scikit-image -d /tmp/sk && unzip -q /tmp/sk/*.whl 'skimage/data/*' -d /tmp/sk
    .venv/bin/python tests/data/make_media.py /tmp/sk/skimage/data
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).parent
FRAMES, FPS, SIZE = 72, 30, (640, 360)


def pan(photo: np.ndarray, out: Path) -> None:
    """Frame k shows the window [x0, x0 + w] x [y0, y0 + h] of the photo (16:9, narrowing from 480 to 400 px
    wide while its centre drifts), resampled to 640x360."""
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    for k in range(FRAMES):
        t = k / (FRAMES - 1)
        w = 480 - 80 * t
        h = w * 9 / 16
        cx, cy = 250 - 30 * t, 150 + 20 * np.sin(np.pi * t)
        s = SIZE[0] / w
        m = np.array([[s, 0, -(cx - w / 2) * s], [0, s, -(cy - h / 2) * s]], np.float64)
        writer.write(cv2.warpAffine(bgr, m, SIZE, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT))
    writer.release()


def main(data: Path) -> None:
    photo = np.asarray(Image.open(data / "astronaut.png").convert("RGB"))
    Image.fromarray(photo).save(HERE / "astronaut.jpg", quality=92)
    shutil.copyfile(data / "camera.png", HERE / "camera.png")
    pan(photo, HERE / "astronaut_pan.mp4")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
