"""Face ids kept across a video's frames by box overlap: each face takes the id of the track whose last
box it overlaps most (IoU, greedy by overlap), else a new id. A track not seen for `patience` frames is
dropped, so a face that returns much later gets a new id — as OpenFace's and py-feat's trackers do."""

from __future__ import annotations

import numpy as np

MIN_IOU = 0.3  # below this, two boxes in neighbouring frames are taken to be different faces
PATIENCE = 30  # frames a track survives unseen (about a second of video)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: [N, 4], b: [M, 4] x1 y1 x2 y2 -> [N, M] intersection over union."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


class Tracker:
    """One video's tracks. `assign(boxes)` gives each box of the next frame its face id."""

    def __init__(self, min_iou: float = MIN_IOU, patience: int = PATIENCE) -> None:
        self.min_iou, self.patience = min_iou, patience
        self.next_id = 0
        self.tracks: dict[int, tuple[np.ndarray, int]] = {}  # id -> (last box, frames since seen)

    def seed(self, face_ids: list[int], boxes: np.ndarray, next_id: int) -> None:
        """Continue from a previous session's last frame (resume): its faces and the next free id."""
        self.tracks = {int(i): (np.asarray(b, np.float32), 0) for i, b in zip(face_ids, boxes)}
        self.next_id = max([next_id, *[i + 1 for i in self.tracks]])

    def assign(self, boxes: np.ndarray) -> list[int]:
        ids = list(self.tracks)
        last = np.array([self.tracks[i][0] for i in ids], np.float32).reshape(-1, 4)
        overlap = iou(np.asarray(boxes, np.float32).reshape(-1, 4), last)
        out: list[int | None] = [None] * len(boxes)
        taken: set[int] = set()
        # Greedy on the largest overlaps first: with faces a few per frame this equals the optimal match
        # in all but contrived cases, and needs no solver.
        for flat in np.argsort(-overlap, axis=None):
            f, t = np.unravel_index(flat, overlap.shape)
            if overlap[f, t] < self.min_iou:
                break
            if out[f] is None and ids[t] not in taken:
                out[f] = ids[t]
                taken.add(ids[t])
        for f in range(len(boxes)):
            if out[f] is None:
                out[f] = self.next_id
                self.next_id += 1
        seen = {fid: (np.asarray(boxes[f], np.float32), 0) for f, fid in enumerate(out)}
        for fid, (box, missed) in self.tracks.items():
            if fid not in seen and missed + 1 < self.patience:
                seen[fid] = (box, missed + 1)
        self.tracks = seen
        return [int(i) for i in out]
