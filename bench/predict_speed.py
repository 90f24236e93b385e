"""`fmae predict` frames/s on a video: ours (frames decoded ahead in a thread with the detector's scaled
copies, MTCNN over batches of frames with every candidate box in one tensor, the model over batches of
faces, tracking and the CSV) against a naive loop on the same file (decode a frame, facenet-pytorch's
`MTCNN().detect` on it, crop, forward one face at a time) with the same crop and model.

The machine is shared, so the contenders take turns, round after round, in one process, and each
round's ratio is reported with the median. Contenders:
- naive: the loop above at 1 thread, MTCNN at its defaults (full resolution, smallest face 20 px); with
  --default-threads also at torch's default threads (what its user gets: on a busy 2-core machine
  2 threads ran it 5-10x slower than 1, so that turn can take minutes);
- ours: `fmae predict` as it runs by default (--detect-size 180, torch threads = cores - 1), and at
  --detect-size 0 (full resolution: the detector's settings the naive loop uses, so the part of the
  speed-up that batching alone gives).
Target: ours ≥ 3× the fastest naive loop, on the 2-core CPU with vit_tiny. On a GPU the same script
gives ViT-B/L figures:
    .venv/bin/python bench/predict_speed.py                          # vit_tiny on the CPU
    .venv/bin/python bench/predict_speed.py --device cuda --encoders vit_base,vit_large --repeat 10
The model's weights are random (speed does not depend on them) unless --model FILE.fmae is given.
"""

from __future__ import annotations

import argparse
import statistics
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


def naive(video: Path, bundle, device, threads: int) -> tuple[int, float]:
    """One frame at a time: decode, detect, crop, forward each face alone."""
    import cv2
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    from fmae.data.torch.transforms import eval_transform
    from fmae.predict.detect import crop_face

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
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
    seconds = time.perf_counter() - start
    torch.set_num_threads(before)
    return frames, seconds


def ours(video: Path, bundle, device, batch: int, folder: Path, detect_size: int, threads: int | None,
         predictors: dict) -> tuple[int, float]:
    from fmae.predict.runner import Predictor, Threshold, predict
    from fmae.predict.sources import list_sources

    if detect_size not in predictors:  # made once, as one `fmae predict` makes it once for all its frames
        predictors[detect_size] = Predictor(bundle, device, detect_size)
    out = folder / f"ours-{bundle.encoder}-{time.monotonic_ns()}.csv"
    start = time.perf_counter()
    result = predict(list_sources([str(video)]), bundle, out, threshold=Threshold("0.5", 0.5, "0.5"),
                     batch_size=batch, predictor=predictors[detect_size], threads=threads)
    return result.frames, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=REPO / "tests" / "data" / "astronaut_pan.mp4")
    ap.add_argument("--repeat", type=int, default=1, help="Play the video this many times (default 1: 72 frames).")
    ap.add_argument("--rounds", type=int, default=3, help="Turns each contender takes (default 3).")
    ap.add_argument("--encoders", default="vit_tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for ours (0: fmae's choice, cores - 1 on the CPU).")
    ap.add_argument("--default-threads", action="store_true",
                    help="Also time the naive loop at torch's default threads (slow on a busy machine).")
    ap.add_argument("--model", type=Path, help="An exported .fmae file instead of random weights.")
    ap.add_argument("--save", type=Path, help="Also append the result here.")
    args = ap.parse_args()

    import torch

    from fmae.predict.runner import cpu_threads

    device = torch.device(args.device)
    default_threads = torch.get_num_threads()
    ours_threads = args.threads or (cpu_threads() if device.type == "cpu" else default_threads)
    lines = [f"predict_speed on {machine()}, device {device}, load average at start {load()} (the machine is "
             f"shared with other engineers' work: absolute numbers move with it; the ratios are per round)"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = video_of(args.video, args.repeat, folder)
        for encoder in args.encoders.split(","):
            if args.model:
                from fmae.predict.model_file import from_file

                bundle = from_file(args.model)
            else:
                bundle = random_bundle(encoder)
            predictors: dict = {}
            contenders = {
                f"naive, torch default threads ({default_threads})": lambda: naive(video, bundle, device, default_threads),
                "naive, 1 thread": lambda: naive(video, bundle, device, 1),
                f"ours (--detect-size 180, {ours_threads} thread(s))":
                    lambda: ours(video, bundle, device, args.batch_size, folder, 180, args.threads or None, predictors),
                f"ours at full resolution (--detect-size 0, {ours_threads} thread(s))":
                    lambda: ours(video, bundle, device, args.batch_size, folder, 0, args.threads or None, predictors),
            }
            if not args.default_threads or default_threads == 1:
                del contenders[f"naive, torch default threads ({default_threads})"]
            if device.type != "cpu" and args.default_threads:
                del contenders["naive, 1 thread"]
            ours(args.video, bundle, device, args.batch_size, folder, 180, None, predictors)  # warm-up
            rates: dict[str, list[float]] = {name: [] for name in contenders}
            for _ in range(args.rounds):
                for name, run in contenders.items():
                    n, seconds = run()
                    rates[name].append(n / seconds)
            names = list(contenders)
            naive_names = [n for n in names if n.startswith("naive")]
            best_naive = [max(rates[n][r] for n in naive_names) for r in range(args.rounds)]
            lines.append(f"{bundle.encoder} at {bundle.input_size} px, {n} frames of {args.video.name} (played "
                         f"{args.repeat}×), batch {args.batch_size}, {args.rounds} rounds; frames/s per round:")
            for name in names:
                ratio = [rates[name][r] / best_naive[r] for r in range(args.rounds)]
                lines.append(f"  {name}: {', '.join(f'{x:.1f}' for x in rates[name])} frames/s; vs the fastest naive "
                             f"loop of its round: median {statistics.median(ratio):.2f}× "
                             f"(rounds {', '.join(f'{x:.2f}' for x in ratio)})")
            lines.append("  target: ours ≥ 3× the fastest naive loop with vit_tiny on the CPU")
    lines.append(f"load average at the end {load()}")
    text = "\n".join(lines)
    print(text)
    if args.save:
        with open(args.save, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
