"""Faces found offline (MTCNN, with the P/R/O-net weights inside the facenet-pytorch wheel), and the
crop the original used (its authors' answer in issue #9 of their repository): the detector's box
widened by 5 % of its width and height on each side, resized to the model's input, no alignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from PIL import Image

MARGIN = 0.05  # of the box's width (left and right) and height (top and bottom)
# MTCNN's own defaults (facenet-pytorch's MTCNN()): smallest face, the three stages' score thresholds,
# and the image pyramid's scale step.
MIN_FACE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709


@dataclass
class Faces:
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 in the frame's pixels (the detector's box, not widened)
    scores: np.ndarray  # [N] detector confidence


NO_FACES = Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))


class FaceDetector:
    """MTCNN over a batch of equally sized frames at once (facenet-pytorch's pyramid runs the batch as
    one tensor, which is where the speed over a frame-by-frame loop comes from)."""

    def __init__(self, device: torch.device) -> None:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.device = device
        self.pnet, self.rnet, self.onet = (net().to(device).eval() for net in (PNet, RNet, ONet))

    def describe(self) -> dict:
        try:
            version = metadata.version("facenet-pytorch")
        except metadata.PackageNotFoundError:  # vendored copy without metadata
            version = "unknown"
        return {"name": "MTCNN", "package": f"facenet-pytorch {version}", "min_face_size": MIN_FACE,
                "thresholds": list(THRESHOLDS), "factor": FACTOR, "crop_margin": MARGIN,
                "crop": "box widened by 5 % of its width/height on each side, clipped to the frame, "
                        "resized to the model input (bicubic), no alignment"}

    def detect(self, frames: list[np.ndarray]) -> list[Faces]:
        """frames: equally sized [H, W, 3] uint8 RGB arrays -> one Faces per frame, faces left to right."""
        from facenet_pytorch.models.utils.detect_face import detect_face

        if not frames:
            return []
        batch = np.stack(frames)  # [B, H, W, 3]
        with torch.no_grad():
            boxes, _ = detect_face(batch, MIN_FACE, self.pnet, self.rnet, self.onet, list(THRESHOLDS), FACTOR,
                                   self.device)
        found = []
        for b in boxes:
            b = np.asarray(b, dtype=np.float32).reshape(-1, 5)
            order = np.argsort(b[:, 0], kind="stable")  # left to right: a stable order for new ids
            found.append(Faces(b[order, :4], b[order, 4]))
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
