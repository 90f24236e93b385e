"""The detector's speed-ups keep its answers: fmae's batched MTCNN (fmae/predict/mtcnn.py) gives
facenet-pytorch's boxes, and detecting on a scaled-down copy of each frame (--detect-size, the default)
keeps the crops within what MTCNN's own boxes move from one video frame to the next. On the real media
in tests/data; bench/predict_speed.py measures the speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """MTCNN as fmae predict runs it on 2 cores (runner.cpu_threads); 2 threads on a busy machine are slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def media() -> dict:
    import cv2

    cap, frames = cv2.VideoCapture(str(DATA / "astronaut_pan.mp4")), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    photos = [np.asarray(Image.open(DATA / n).convert("RGB")) for n in ("astronaut.jpg", "camera.png")]
    video = frames[::12]  # 6 frames across the pan and zoom
    return {"video": video, "photos": photos, "facenet": _facenet(video + photos)}


def _facenet(frames: list[np.ndarray]) -> list[np.ndarray]:
    """facenet-pytorch's own detection at MTCNN's defaults, one frame at a time: [N, 5] per frame."""
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    from facenet_pytorch.models.utils.detect_face import detect_face

    from fmae.predict.detect import FACTOR, MIN_FACE, THRESHOLDS

    nets = [net().eval() for net in (PNet, RNet, ONet)]
    with torch.no_grad():
        return [np.asarray(detect_face(f, MIN_FACE, *nets, list(THRESHOLDS), FACTOR, "cpu")[0][0], np.float32)
                .reshape(-1, 5) for f in frames]


def test_area_crops_are_interpolate_area_of_each_box():
    from torch.nn.functional import interpolate

    from fmae.predict.mtcnn import area_crops

    frames = torch.randint(0, 256, (2, 3, 50, 70), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y, ey = np.array([1, 5, 10, 3]), np.array([30, 50, 20, 44])
    x, ex = np.array([1, 7, 60, 2]), np.array([25, 70, 70, 13])
    image = np.array([0, 1, 1, 0])
    ours = area_crops(frames, image, y, ey, x, ex, 24)
    for k in range(4):
        box = frames[image[k]:image[k] + 1, :, y[k] - 1:ey[k], x[k] - 1:ex[k]].float()
        assert torch.allclose(ours[k], interpolate(box, size=(24, 24), mode="area")[0], atol=1e-4)



def test_a_candidate_box_outside_its_frame_is_dropped_not_a_crash():
    from facenet_pytorch.models.mtcnn import RNet

    from fmae.predict.mtcnn import next_stage

    net = RNet().eval().to(memory_format=torch.channels_last)
    outside = torch.tensor([[100.0, 100.0, 120.0, 120.0, 0.9]])
    with torch.inference_mode():
        boxes, image, (reg, probs) = next_stage(torch.zeros(1, 3, 40, 40), outside, torch.zeros(1, dtype=torch.long),
                                            40, 40, 24, net)
    assert boxes.shape == (0, 5) and image.shape == (0,) and reg.shape == (0, 4) and probs.shape == (0, 2)


def test_batched_mtcnn_gives_facenet_pytorchs_boxes_at_full_resolution(media):
    from fmae.predict.detect import FaceDetector

    frames = media["video"] + media["photos"]
    reference = media["facenet"]
    found = FaceDetector(CPU, detect_size=0).detect(frames)  # a batch of video frames and one of photos
    for ref, faces in zip(reference, found):
        ref = ref[np.argsort(ref[:, 0], kind="stable")]
        assert len(ref) == len(faces.boxes) >= 1
        assert np.abs(ref[:, :4] - faces.boxes).max() < 0.01 and np.abs(ref[:, 4] - faces.scores).max() < 1e-4


def test_detecting_on_a_scaled_copy_keeps_the_crops(media):
    from fmae.predict.detect import FaceDetector, crop_box, detection_copy
    from fmae.predict.tracking import iou

    def crops(boxes: np.ndarray, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        return np.array([crop_box(b, w, h) for b in boxes], np.float32).reshape(-1, 4)

    assert detection_copy(media["video"][0], 180).shape == (180, 320, 3)
    assert detection_copy(media["video"][0], 0) is media["video"][0]  # 0: the frame as it is
    small = np.zeros((100, 150, 3), np.uint8)
    assert detection_copy(small, 180) is small  # never scaled up
    detector = FaceDetector(CPU)  # the default: shorter side 180 px
    assert detector.describe()["detect_size"] == 180
    video, photos = media["video"], media["photos"]
    full = media["facenet"]
    scaled = detector.detect(video + photos)  # two frame sizes in one call: batched by size
    overlap = [iou(crops(f[:, :4], img), crops(s.boxes, img)).max(initial=0.0)
               for f, s, img in zip(full, scaled, video + photos)]
    steps = [iou(crops(a[:, :4], video[0]), crops(b[:, :4], video[0])).max() for a, b in zip(full, full[1:len(video)])]
    assert [len(s.boxes) for s in scaled] == [1] * len(scaled)
    # The video's face (115-145 px wide) moves less against full resolution than between frames 12 apart.
    assert min(overlap[:len(video)]) >= 0.85 and np.mean(overlap[:len(video)]) >= 0.93
    assert min(overlap[:len(video)]) >= min(steps) - 0.02
    # The photos: her face (87 px of 512) as closely; the cameraman's (55 px, 20 px in the copy: the smallest
    # it finds) a little looser.
    assert overlap[len(video)] >= 0.9 and overlap[len(video) + 1] >= 0.8


def test_detect_size_is_checked():
    from fmae.errors import FmaeError
    from fmae.predict.detect import FaceDetector, check_detect_size

    assert (check_detect_size(0), check_detect_size(40), check_detect_size(720)) == (0, 40, 720)
    for bad in (-1, 30):
        with pytest.raises(FmaeError, match=f"--detect-size {bad}: give 0"):
            check_detect_size(bad)
    with pytest.raises(FmaeError, match="--detect-size 30: give 0"):
        FaceDetector(CPU, detect_size=30)
