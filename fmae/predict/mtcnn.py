"""MTCNN's three stages over a batch of equally sized frames: facenet-pytorch's `detect_face` (its P/R/O
nets and weights, its box arithmetic, imported from it), with the step it takes box by box done for all
boxes at once. Between the stages every candidate box is cut out of its frame and area-resampled to
R-net's 24 px or O-net's 48 px; facenet-pytorch makes one `interpolate(mode="area")` call per box (tens
per frame; a third of its detector's time in one profile). Here the same averages come from one integral
image per frame: area resampling is `adaptive_avg_pool2d`, whose output cell i covers input rows
floor(i·h/n) … ceil((i+1)·h/n), and each cell's sum is four look-ups. The nets' inputs are
channels-last (FaceDetector makes the nets so). The boxes agree with facenet-pytorch's to float
rounding (tests/test_predict_detect.py)."""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (batched_nms_numpy, bbreg, fixed_batch_process,
                                                      generateBoundingBox, pad, rerec)
from torch import nn
from torch.nn.functional import interpolate
from torchvision.ops.boxes import batched_nms


def area_crops(frames: torch.Tensor, image: np.ndarray, y: np.ndarray, ey: np.ndarray, x: np.ndarray,
               ex: np.ndarray, size: int) -> torch.Tensor:
    """frames: [B, 3, H, W] pixel values 0…255 (any dtype); box k is frames[image[k], :, y[k]-1:ey[k], x[k]-1:ex[k]]
    (facenet's `pad` convention) -> [K, 3, size, size], each box area-resampled as `interpolate` would."""
    top, left = torch.as_tensor(y - 1, dtype=torch.long), torch.as_tensor(x - 1, dtype=torch.long)
    h = torch.as_tensor(ey, dtype=torch.long) - top
    w = torch.as_tensor(ex, dtype=torch.long) - left
    i = torch.arange(size)
    # adaptive pooling's bins, in integers: [K, size] first and one-past-last row/column of each cell
    r0 = top[:, None] + (i[None] * h[:, None]) // size
    r1 = top[:, None] - ((-(i[None] + 1) * h[:, None]) // size)
    c0 = left[:, None] + (i[None] * w[:, None]) // size
    c1 = left[:, None] - ((-(i[None] + 1) * w[:, None]) // size)
    out = torch.empty(len(top), 3, size, size, dtype=torch.float32, device=frames.device)
    for b in np.unique(image):
        k = torch.as_tensor(np.flatnonzero(image == b))
        # Only the region the frame's boxes cover is summed: a face is a small part of a large frame.
        ya, yb = int(r0[k].min()), int(r1[k].max())
        xa, xb = int(c0[k].min()), int(c1[k].max())
        region = frames[int(b), :, ya:yb, xa:xb].to(torch.float64)  # [3, h, w]; exact sums of 0…255 values
        table = torch.zeros(3, yb - ya + 1, xb - xa + 1, dtype=torch.float64, device=frames.device)
        table[:, 1:, 1:] = region.cumsum(1).cumsum(2)
        ra, rb = (r0[k] - ya).to(frames.device), (r1[k] - ya).to(frames.device)  # [k, size]
        ca, cb = (c0[k] - xa).to(frames.device), (c1[k] - xa).to(frames.device)

        def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return table[:, rows[:, :, None], cols[:, None, :]]  # [3, k, size, size]

        sums = at(rb, cb) - at(ra, cb) - at(rb, ca) + at(ra, ca)
        cells = ((rb - ra)[:, :, None] * (cb - ca)[:, None, :]).to(torch.float64)  # [k, size, size]
        out[k.to(frames.device)] = (sums / cells).permute(1, 0, 2, 3).to(torch.float32)
    return out


def next_stage(frames: torch.Tensor, boxes: torch.Tensor, image: torch.Tensor, w: int, h: int, size: int,
           net: nn.Module) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Cut each box out (clipped to the frame), resample to `size`, run `net`. Boxes entirely outside
    their frame are dropped (facenet-pytorch skips their crops too, but keeps the boxes)."""
    y, ey, x, ex = pad(boxes, w, h)
    keep = (ey > y - 1) & (ex > x - 1)
    if not keep.all():
        index = torch.as_tensor(np.flatnonzero(keep), device=boxes.device)
        boxes, image = boxes[index], image[index]
        y, ey, x, ex = y[keep], ey[keep], x[keep], ex[keep]
    crops = area_crops(frames, image.cpu().numpy(), y, ey, x, ex, size)
    crops = ((crops - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)
    if not len(crops):  # every box outside its frame: the nets' outputs, empty (they refuse an empty batch)
        blank = torch.zeros(1, 3, size, size, device=crops.device).contiguous(memory_format=torch.channels_last)
        return boxes, image, tuple(o[:0] for o in net(blank))
    return boxes, image, fixed_batch_process(crops, net)


def detect_faces(frames: np.ndarray, min_face: float, pnet: nn.Module, rnet: nn.Module, onet: nn.Module,
                 thresholds: tuple[float, float, float], factor: float,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """frames: [B, H, W, 3] uint8 RGB -> boxes [N, 5] (x1, y1, x2, y2, score) and image [N] (which frame)."""
    imgs = torch.as_tensor(frames, device=device).permute(0, 3, 1, 2).float()  # [B, 3, H, W]
    h, w = imgs.shape[2:4]

    scale, side, scales = 12.0 / min_face, min(h, w) * 12.0 / min_face, []
    while side >= 12:  # the image pyramid: P-net sees 12 px faces at every level
        scales.append(scale)
        scale, side = scale * factor, side * factor
    boxes, image, picks, offset = [], [], [], 0
    for scale in scales:  # stage 1: P-net over each pyramid level, the whole batch at once
        level = (interpolate(imgs, (int(h * scale + 1), int(w * scale + 1)), mode="area") - 127.5) * 0.0078125
        reg, probs = pnet(level.contiguous(memory_format=torch.channels_last))
        found, found_image = generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        boxes.append(found)
        image.append(found_image)
        picks.append(batched_nms(found[:, :4], found[:, 4], found_image, 0.5) + offset)
        offset += found.shape[0]
    pick = torch.cat(picks)
    boxes, image = torch.cat(boxes)[pick], torch.cat(image)[pick]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image, 0.7)
    boxes, image = boxes[pick], image[pick]
    rw, rh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * rw, boxes[:, 1] + boxes[:, 6] * rh,
                         boxes[:, 2] + boxes[:, 7] * rw, boxes[:, 3] + boxes[:, 8] * rh, boxes[:, 4]], 1)
    boxes = rerec(boxes)
    if len(boxes):  # stage 2: R-net on 24 px crops
        boxes, image, (reg, probs) = next_stage(imgs, boxes, image, w, h, 24, rnet)
        score = probs[:, 1]
        ok = score > thresholds[1]
        boxes, image, reg = torch.cat([boxes[ok, :4], score[ok, None]], 1), image[ok], reg[ok]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image, 0.7)
        boxes = rerec(bbreg(boxes[pick], reg[pick]))
        image = image[pick]
    if len(boxes):  # stage 3: O-net on 48 px crops
        boxes, image, (reg, _points, probs) = next_stage(imgs, boxes, image, w, h, 48, onet)
        score = probs[:, 1]
        ok = score > thresholds[2]
        boxes, image, reg = torch.cat([boxes[ok, :4], score[ok, None]], 1), image[ok], reg[ok]
        boxes = bbreg(boxes, reg)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image, 0.7, "Min")
        boxes, image = boxes[pick], image[pick]
    return boxes.cpu().numpy(), image.cpu().numpy()
