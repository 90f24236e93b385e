"""CPU training speed: `vit_tiny` fine-tuning steps/s, fmae's way against the original FMAE-IAT way.

fp32 for both (the engine's choice on the CPU). Ours: fused attention (F.scaled_dot_product_attention),
multi-tensor AdamW and, with the real loader, the pixel cache (uint8 batches, normalisation and erasing in
the main process). Original-style: unfused attention (timm `fused_attn = False`), the per-parameter AdamW
loop, JPEG + PIL decoding in the workers. Two variants: synthetic tensors (the model step alone) and the
real loader (the engine's datasets, the same worker count for both). The step is the engine's (see
harness.py). GPU numbers: gpu_train.py.

Usage: python bench/train_speed.py [--batch 64] [--steps 15] [--workers 2] [--images 1024]
Writes bench/results/train_speed-<machine>.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    engine_datasets, finetune_cfg, finetune_stepper, load, loader_batches, machine, make_jpegs, release, styles,
    synthetic_batches, time_steps,
)

MODEL = "vit_tiny"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="input size (vit_tiny's own: 64)")
    p.add_argument("--source-size", type=int, default=112, help="side of the JPEGs (fmae synth's default)")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0 = torch's default, one per core). On a shared machine the "
                        "default stalls: every small operation waits for all cores")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from fmae.data.pixel_cache import build_cache

    device = torch.device("cpu")
    ours, orig = styles(device)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
             f"load average (1/5/15 min) at start: {load()}",
             f"{MODEL} at {args.size} px, batch {args.batch}, fp32; {args.warmup} warm-up + {args.steps} timed steps; "
             f"real loader: {args.images} JPEGs of {args.source_size} px, {args.workers} workers for both",
             f"ours: {ours.describe('cpu')}, pixel cache; original-style: {orig.describe('cpu')}, JPEG + PIL", "",
             "| variant | original-style (steps/s) | ours (steps/s) | speed-up |", "|---|---:|---:|---:|"]
    tmp = Path(tempfile.mkdtemp(prefix="fmae-train-speed-"))
    try:
        root = tmp / "faces"
        paths = make_jpegs(root, args.images, args.source_size)
        build_cache(root, size=args.size)
        cfg = finetune_cfg(args.size)
        jpeg, cached = engine_datasets(root, paths, cfg, train=True)
        results = {}
        for variant in ("synthetic tensors", "real loader"):
            rates = {}
            for style in (orig, ours):
                torch.manual_seed(0)
                stepper = finetune_stepper(MODEL, args.size, style, device)
                if variant == "real loader":
                    batches = loader_batches(cached if style.data == "cache" else jpeg, args.batch, args.workers, device)
                else:
                    batches = synthetic_batches(args.batch, args.size, device)
                t = time_steps(stepper, batches, args.batch, args.warmup, args.steps)
                rates[style.name] = 1 / t.step_s
                stepper = batches = None
                release()
                print(f"{variant}, {style.name}: {rates[style.name]:.2f} steps/s", flush=True)
            a, b = rates["original-style"], rates["ours"]
            results[variant] = b / a
            lines.append(f"| {variant} | {a:.2f} | {b:.2f} | {b / a:.2f}× |")
        lines += ["", f"load average at end: {load()}"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    out = args.out or HERE / "results" / f"train_speed-{machine()}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.0f} s")
