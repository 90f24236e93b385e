"""Peak memory (RSS) of a trainer on the CPU: `fmae train` of vit_base at 224 px, batch 64, a step or two.

No target (issue 19 asks for the number). The trainer runs as the user runs it, a `fmae train` process
with `num_workers = 0` (so the peak is one process's), on synthetic BP4D faces at 224 px: 6 subjects ×
`--frames` frames, fold 1 (2 test subjects), so 64 train frames are one step of 64 and each epoch then
evaluates the test frames. The peak is the kernel's (`ru_maxrss` of the finished child), and the time
each step took is read from metrics.jsonl.

Usage: python bench/trainer_memory.py [--model vit_base] [--size 224] [--batch 64] [--epochs 1] [--frames 16]
Writes bench/results/trainer_memory-<machine>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fmae(*args, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fmae", *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"fmae {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_base")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1, help="each epoch is one step of --batch and one evaluation")
    p.add_argument("--frames", type=int, default=16, help="frames per subject: 4 train subjects × 16 = 64")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = Path(tmp) / "synth", Path(tmp) / "runs"
        fmae("synth", "bp4d", "--out", data, "--subjects", 6, "--frames", args.frames, "--size", args.size)
        load_before = os.getloadavg()
        start = time.perf_counter()
        fmae("train", "bp4d", "--fold", 1, "--root", data, "--labels", data / "labels.jsonl", "--model", args.model,
             "--batch-size", args.batch, "--epochs", args.epochs, "--set", f"input_size={args.size}",
             "--set", "num_workers=0", "--set", "warmup_epochs=0", "--device", "cpu", "--runs-dir", runs, env=env)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest finished child's
        (run,) = [d for d in runs.iterdir() if d.is_dir()]
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steps = max(r["step"] for r in records if r["split"] == "train")
        rates = [r["images_per_s"] for r in records if r.get("images_per_s")]
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"load average (1/5/15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after {', '.join(f'{x:.2f}' for x in load_after)}",
        f"fmae train: {args.model}, {args.size} px, batch {args.batch}, fp32 on the CPU, num_workers 0, "
        f"{steps} optimizer step(s) and {args.epochs} evaluation(s)",
        f"peak RSS of the trainer process: {peak_kib / 1024:.0f} MiB ({peak_kib / 1024 ** 2:.2f} GiB)",
        f"wall time of the whole command: {wall:.0f} s"
        + (f"; training images/s as logged: {', '.join(f'{r:.1f}' for r in rates)}" if rates else ""),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or HERE / "results" / f"trainer_memory-{platform.machine()}-{os.cpu_count()}cpu.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
