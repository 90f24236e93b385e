"""Faces found offline (MTCNN, with the P/R/O-net weights inside the facenet-pytorch wheel), and the
crop the original used (its authors' answer in issue #9 of their repository): the detector's box
widened by 5 % of its width and height on each side, resized to the model's input, no alignment.
torch, OpenCV and facenet-pytorch load when a detector is made (the command line reads DETECT_SIZE).

MTCNN looks at a copy of each frame scaled down so that its shorter side is `detect_size` pixels
(180 by default; 0 = the frame as it is), the boxes are scaled back, and the crop is cut from the
full-resolution frame. Most of MTCNN's time is its first stage over an image pyramid whose area is
that of the frame, so a smaller copy is that much faster; the cost is the smallest face found, 20 px
in the copy (1/9 of the frame's shorter side at 180). The boxes move against full-resolution
detection by no more than MTCNN's own boxes move from one frame of a video to the next
(tests/test_predict_detect.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fmae.predict.detect_size import DETECT_SIZE, MIN_FACE, check_detect_size  # noqa: F401  (read from here too)

if TYPE_CHECKING:
    import torch

MARGIN = 0.05  # of the box's width (left and right) and height (top and bottom)
# MTCNN's own defaults (facenet-pytorch's MTCNN()): the three stages' score thresholds and the image
# pyramid's scale step; the smallest face and the copy's size are in detect_size.py.
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709


@dataclass
class Faces:
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 in the frame's pixels (the detector's box, not widened)
    scores: np.ndarray  # [N] detector confidence


NO_FACES = Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))


def detection_copy(rgb: np.ndarray, detect_size: int) -> np.ndarray:
    """The frame as the detector sees it: area-scaled down so its shorter side is `detect_size` (never
    up; 0 keeps it). Made in the decode thread (OpenCV resizes without the GIL)."""
    import cv2

    h, w = rgb.shape[:2]
    if detect_size <= 0 or min(h, w) <= detect_size:
        return rgb
    s = detect_size / min(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


class FaceDetector:
    """MTCNN over batches of frames (fmae/predict/mtcnn.py: the three stages with every frame of a batch
    and every candidate box in one tensor), on copies scaled to `detect_size`."""

    def __init__(self, device: torch.device, detect_size: int = DETECT_SIZE) -> None:
        import torch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.device, self.detect_size = device, check_detect_size(detect_size)
        # Channels-last, the three nets' convolutions and max-pooling run 2.5-3.5x faster on a CPU (the same
        # numbers to float rounding); mtcnn.py hands them channels-last inputs.
        self.pnet, self.rnet, self.onet = (net().to(device, memory_format=torch.channels_last).eval()
                                           for net in (PNet, RNet, ONet))

    def describe(self) -> dict:
        try:
            version = metadata.version("facenet-pytorch")
        except metadata.PackageNotFoundError:  # vendored copy without metadata
            version = "unknown"
        size = f"shorter side scaled to {self.detect_size} px" if self.detect_size else "full resolution"
        return {"name": "MTCNN", "package": f"facenet-pytorch {version}", "detect_size": self.detect_size,
                "detected_on": f"a copy of each frame, {size}; boxes scaled back to the frame",
                "min_face_size": f"{MIN_FACE} px in that copy", "thresholds": list(THRESHOLDS), "factor": FACTOR,
                "crop_margin": MARGIN,
                "crop": "box widened by 5 % of its width/height on each side, clipped to the frame, "
                        "resized to the model input (bicubic), no alignment"}

    def detect(self, frames: list[np.ndarray], copies: list[np.ndarray] | None = None) -> list[Faces]:
        """frames: [H, W, 3] uint8 RGB arrays, of any sizes -> one Faces per frame, faces left to right, in
        the frame's pixels. `copies`: each frame's detection_copy, when the caller made them already."""
        import torch

        from fmae.predict.mtcnn import detect_faces

        copies = copies if copies is not None else [detection_copy(f, self.detect_size) for f in frames]
        found: list[Faces] = [NO_FACES] * len(frames)
        by_shape: dict[tuple, list[int]] = {}
        for i, c in enumerate(copies):  # MTCNN batches frames of one size
            by_shape.setdefault(c.shape, []).append(i)
        for shape, index in by_shape.items():
            with torch.inference_mode():
                boxes, image = detect_faces(np.stack([copies[i] for i in index]), MIN_FACE, self.pnet, self.rnet,
                                            self.onet, THRESHOLDS, FACTOR, self.device)
            for j, i in enumerate(index):
                b = boxes[image == j].astype(np.float32)
                (h, w), (ch, cw) = frames[i].shape[:2], shape[:2]
                b[:, [0, 2]] *= w / cw  # back to the frame's pixels
                b[:, [1, 3]] *= h / ch
                order = np.argsort(b[:, 0], kind="stable")  # left to right: a stable order for new ids
                found[i] = Faces(b[order, :4], b[order, 4])
        return found


def crop_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The detector's box widened by MARGIN on each side, as whole pixels clipped to the frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dw, dh = (x2 - x1) * MARGIN, (y2 - y1) * MARGIN
    left, top = max(0, int(round(x1 - dw))), max(0, int(round(y1 - dh)))
    right, bottom = min(width, int(round(x2 + dw))), min(height, int(round(y2 + dh)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_face(rgb: np.ndarray, box: np.ndarray, size: int) -> Image.Image:
    """The face as the model sees it before its eval transform: [size, size] RGB."""
    h, w = rgb.shape[:2]
    left, top, right, bottom = crop_box(box, w, h)
    face = Image.fromarray(np.ascontiguousarray(rgb[top:bottom, left:right]))
    return face.resize((size, size), Image.BICUBIC)
