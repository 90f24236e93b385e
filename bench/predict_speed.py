"""`fmae predict` frames/s on a video: ours (frames decoded ahead in a thread, MTCNN over batches of frames,
the model over batches of faces, tracking and the CSV) against a naive loop on the same file (decode a
frame, detect its faces, crop, forward one face at a time) with the same detector, crop and model.

Target: ≥ 3× on the 2-core CPU with vit_tiny. On a GPU the same script gives ViT-B/L figures:
    .venv/bin/python bench/predict_speed.py                          # vit_tiny on the CPU
    .venv/bin/python bench/predict_speed.py --device cuda --encoders vit_base,vit_large --repeat 10
The model's weights are random (speed does not depend on them) unless --model FILE.fmae is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from harness import load, machine  # noqa: E402


def random_bundle(encoder: str):
    from fmae.model_specs import encoder_spec
    from fmae.models.encoders import create_encoder
    from fmae.models.heads import FineTuneModel
    from fmae.predict.model_file import ModelBundle
    from fmae.registry import get_dataset

    spec = get_dataset("bp4d")
    size = encoder_spec(encoder).input_size
    model = FineTuneModel(create_encoder(encoder, img_size=size), spec.num_outputs)
    return ModelBundle(task="au", dataset="bp4d", encoder=encoder, input_size=size, au_codes=list(spec.au_codes),
                       classes=[], thresholds={"0.5": {"value": 0.5, "label": "0.5 (fixed)"}}, recipe={},
                       state=model.state_dict(), origin={"model_file": f"random {encoder}"})


def video_of(source: Path, repeat: int, folder: Path) -> Path:
    """The source video played `repeat` times in a row (a longer file for a steadier figure)."""
    if repeat <= 1:
        return source
    import cv2

    cap = cv2.VideoCapture(str(source))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    h, w = frames[0].shape[:2]
    out = folder / "long.avi"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for _ in range(repeat):
        for f in frames:
            writer.write(f)
    writer.release()
    return out


def naive(video: Path, bundle, device) -> tuple[int, float]:
    """One frame at a time: decode, detect, crop, forward each face alone."""
    import cv2
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    from fmae.data.torch.transforms import eval_transform
    from fmae.predict.detect import crop_face

    mtcnn = MTCNN(keep_all=True, device=device)
    model = bundle.build(device)
    tf = eval_transform({"input_size": bundle.input_size})
    start = time.perf_counter()
    cap = cv2.VideoCapture(str(video))
    frames = 0
    with torch.inference_mode():
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes, _ = mtcnn.detect(Image.fromarray(rgb))
            for box in [] if boxes is None else boxes:
                logits, _ = model(tf(crop_face(rgb, box, bundle.input_size))[None].to(device))
                torch.sigmoid(logits).cpu()
            frames += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return frames, time.perf_counter() - start


def ours(video: Path, bundle, device, batch: int, folder: Path) -> tuple[int, float]:
    from fmae.predict.runner import Predictor, Threshold, predict
    from fmae.predict.sources import list_sources

    pred = Predictor(bundle, device)
    out = folder / f"ours-{bundle.encoder}-{time.monotonic_ns()}.csv"
    start = time.perf_counter()
    result = predict(list_sources([str(video)]), bundle, out, threshold=Threshold("0.5", 0.5, "0.5"),
                     batch_size=batch, predictor=pred)
    return result.frames, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=REPO / "tests" / "data" / "single_face.mp4")
    ap.add_argument("--repeat", type=int, default=2, help="Play the video this many times (default 2: 144 frames).")
    ap.add_argument("--encoders", default="vit_tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default).")
    ap.add_argument("--model", type=Path, help="An exported .fmae file instead of random weights.")
    ap.add_argument("--save", type=Path, help="Also write the result here.")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lines = [f"predict_speed on {machine()}, device {device}, torch threads {torch.get_num_threads()}, "
             f"load average at start {load()} (the machine is shared with other engineers' work: absolute "
             "numbers move with it)"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = video_of(args.video, args.repeat, folder)
        for encoder in args.encoders.split(","):
            if args.model:
                from fmae.predict.model_file import from_file

                bundle = from_file(args.model)
            else:
                bundle = random_bundle(encoder)
            ours(args.video, bundle, device, args.batch_size, folder)  # warm-up: weights, kernels, caches
            n_naive, t_naive = naive(video, bundle, device)
            n_ours, t_ours = ours(video, bundle, device, args.batch_size, folder)
            assert n_naive == n_ours, (n_naive, n_ours)
            fn, fo = n_naive / t_naive, n_ours / t_ours
            lines.append(f"{bundle.encoder} at {bundle.input_size} px, {n_ours} frames of {args.video.name} "
                         f"(played {args.repeat}×), batch {args.batch_size}: naive loop {fn:.1f} frames/s, "
                         f"ours {fo:.1f} frames/s — {fo / fn:.2f}× (target ≥ 3× with vit_tiny on the CPU)")
    lines.append(f"load average at the end {load()}")
    text = "\n".join(lines)
    print(text)
    if args.save:
        args.save.write_text(text + "\n")


if __name__ == "__main__":
    main()
