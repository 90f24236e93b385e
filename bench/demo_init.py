"""Make the demo's packaged init: a small MAE-pretrained vit_tiny, produced by fmae itself.

    fmae synth affectnet8 --seed 1 / fmae synth bp4d --seed 2   (other people than the demo's seed-0 copy)
      -> fmae data lmdb -> fmae pretrain --model vit_tiny (its own 3 × 64 decoder)
      -> the encoder's weights only, fp16, into fmae/assets/vit_tiny_mae_synth.pth

The demo (fmae/recipes.py `_DEMO`'s `init = "fmae:vit_tiny_mae_synth"`) fine-tunes from that file. No
pretraining image shows a person of the demo's labelled set: a synthetic identity is drawn from the seed.
Writes bench/results/demo_init-<machine>.md (command, loss per epoch, sha256, load). Usage:

    OMP_NUM_THREADS=1 python bench/demo_init.py [--epochs 10] [--from-run RUN_DIR]

`--from-run` skips pretraining and packages an existing (e.g. stopped) pretraining run's last epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ASSET = REPO / "fmae" / "assets" / "vit_tiny_mae_synth.pth"
FMAE = [sys.executable, "-m", "fmae"]


def fmae(*args: object) -> None:
    subprocess.run([*FMAE, *map(str, args)], check=True, cwd=REPO)


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--blr", type=float, default=3e-3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workdir", type=Path, default=HERE / ".demo_init")
    p.add_argument("--from-run", type=Path, default=None, help="package this pretraining run instead of training")
    p.add_argument("--out", type=Path, default=ASSET)
    args = p.parse_args()
    work = args.workdir.resolve()
    machine = f"{platform.machine()}-{os.cpu_count()}cpu"
    start_load, start = load(), time.strftime("%H:%M UTC", time.gmtime())
    sources = [work / f"affectnet8-n100-f40-s{args.size}-seed1", work / f"bp4d-f60-s{args.size}-seed2"]
    commands = []
    if args.from_run is None:
        if not (sources[0] / "synth.json").exists():
            fmae("synth", "affectnet8", "--out", sources[0], "--subjects", 100, "--frames", 40, "--size", args.size,
                 "--seed", 1)
        if not (sources[1] / "synth.json").exists():
            fmae("synth", "bp4d", "--out", sources[1], "--frames", 60, "--size", args.size, "--seed", 2)
        store = work / "store"
        if not (store / "data.mdb").exists():
            fmae("data", "lmdb", *sources, "--out", store)
        runs = work / "runs"
        cmd = ["pretrain", "--data", store, "--model", "vit_tiny", "--seed", 0, "--epochs", args.epochs,
               "--batch-size", args.batch_size, "--set", f"blr={args.blr}", "--set", "warmup_epochs=1",
               "--set", "num_workers=0", "--set", f"input_size={args.size}", "--runs-dir", runs, "--quiet"]
        commands.append("fmae " + " ".join(str(c).replace(str(REPO) + "/", "") for c in cmd))
        fmae(*cmd)
        run = max(runs.iterdir(), key=lambda d: d.stat().st_mtime)
    else:
        run = args.from_run.resolve()
    package(run, args.out)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    lines = [
        "# The demo's packaged init: MAE-pretrained vit_tiny on synthetic faces of other people",
        "",
        f"machine: {machine}, Python {platform.python_version()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"started {start}, load average (1/5/15 min) {start_load}; ended {time.strftime('%H:%M UTC', time.gmtime())},"
        f" load {load()} (the machine is shared with other engineers' tests)",
        "",
        "command: `" + " ".join(["python", "bench/demo_init.py", *sys.argv[1:]]) + "`, which ran:",
        "",
        *[f"- `{c}`" for c in commands or ["(packaged an existing run: " + str(run) + ")"]],
        f"- data: `fmae synth affectnet8 --subjects 100 --frames 40 --size {args.size} --seed 1` and `fmae synth bp4d"
        f" --frames 60 --size {args.size} --seed 2` (41 subjects): 6,460 unlabelled faces, none of the demo's"
        " seed-0 people; packed with `fmae data lmdb`",
        f"- packaged: {args.out.relative_to(REPO)} — the encoder's weights of the last epoch, fp16,"
        f" {args.out.stat().st_size / 1e6:.2f} MB, sha256 `{digest}`",
        "",
        "| epoch | masked-patch loss (norm-pix; predicting 0 scores ≈ 1.0) | images/s |",
        "|---|---|---|",
        *loss_table(records),
        "",
    ]
    result = HERE / "results" / f"demo_init-{machine}.md"
    result.write_text("\n".join(lines))
    print(f"{args.out}: sha256 {digest}; {result}")


def loss_table(records: list[dict]) -> list[str]:
    """One row per epoch: its loss, and the mean of its step records' images/s (the load shows in it)."""
    rows = []
    for r in (r for r in records if r.get("split") == "train_epoch"):
        speeds = [x["images_per_s"] for x in records if x.get("split") == "train" and x["epoch"] == r["epoch"]]
        rows.append(f"| {r['epoch']} | {r['loss']:.4f} | {sum(speeds) / max(1, len(speeds)):.0f} |")
    return rows


def package(run: Path, out: Path) -> None:
    """The encoder only (no decoder, no optimizer), fp16: a few MB inside the package."""
    import torch

    from fmae.models.checkpoint import read_checkpoint, save_checkpoint

    ckpt = read_checkpoint(run / "checkpoints" / "pretrained.pth")
    decoder = ("decoder", "mask_token")
    state = {k: v.half() for k, v in ckpt["model"].items() if not k.startswith(decoder)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, {"model": state, "epoch": int(ckpt.get("epoch", 0)),
                          "made_by": "bench/demo_init.py (fmae pretrain --model vit_tiny, synthetic faces)"})
    assert all(t.dtype == torch.float16 for t in state.values())


if __name__ == "__main__":
    main()
