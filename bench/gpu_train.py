"""GPU training throughput: fmae's way against the original FMAE-IAT way, on the same card, one table.

Fine-tuning ViT-B/16 and ViT-L/16 at 224 px (the AU recipe: global pool, 12-AU head, drop-path 0.1,
layer-wise lr decay, AdamW, batch 64), in images/s and model-FLOPs utilisation (MFU: 3 × forward FLOPs
per image — forward ≈ 17.6 / 61.6 GMACs — × images/s, over the card's dense bf16 peak; also over the
bf16 matmul rate measured here):

- ours: bf16 autocast (fp16 + grad scaler on cards without bf16), fused attention
  (F.scaled_dot_product_attention), fused AdamW, optionally `torch.compile` (each transformer block,
  compiled once and reused: `--compile blocks`, the default), and with the real loader the pixel cache
  (uint8 batches; normalisation and erasing on the GPU);
- original-style: fp16 autocast + grad scaler, unfused attention (timm `fused_attn = False`: softmax(q·kᵀ)·v
  as timm 0.3.2), the per-parameter AdamW loop, JPEG + PIL decoding in the workers, float32 batches.

Variants: synthetic tensors already on the GPU (the model step alone), and the real loader (the engine's
datasets over generated 256 px face-crop JPEGs and their pixel cache, the same worker count for both).
Also MAE pretraining images/s (ViT-B and ViT-L encoders; the paper's decoder, 8 blocks × 512, and a
small one, 2 × 256). Targets (issue 8, on an H100): ours ≥ 1.5× original-style, ≥ 40 % MFU for ViT-L.

Runs in under 5 minutes on an H100/H200 (`--budget` seconds, default 270: what does not fit is listed as
skipped; measurements run in priority order). Failures (out of memory, a torch.compile error) are
reported in the table, not raised. Needs only torch, timm, numpy and fmae itself; no network.

    python bench/gpu_train.py                  # writes bench/results/gpu_train-<card>.md
    python bench/gpu_train.py --tiny --out X   # CPU smoke test of the whole script (seconds; tests run it)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    Style, Timing, engine_datasets, finetune_cfg, finetune_stepper, first_line, load, loader_batches, mae_macs,
    mae_stepper, make_jpegs, release, replace, styles, synthetic_batches, time_steps, vit_macs,
)

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, by a substring of the device name;
# the first match wins, so the more specific names come first.
PEAKS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12),
         ("H800", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
         ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12),
         ("4090", 165e12), ("3090", 71e12), ("V100", 125e12), ("T4", 65e12)]


COMPILE_RESERVE = 90.0  # seconds a compiled row may take (compiling a ViT block, forward and backward)


@dataclass
class Settings:
    device: object
    size: int
    batch: int
    warmup: int
    steps: int
    models: tuple[str, ...]
    mae_decoders: dict[str, tuple[int, int, int]]
    loader_images: int
    source_size: int
    workers: int
    compile: str
    compile_backend: str
    budget: float


@dataclass
class Row:
    kind: str  # "fine-tune, synthetic" | "fine-tune, real loader" | "MAE pretrain, synthetic"
    model: str
    style: Style
    flops_per_image: float  # training: 3 × 2 × forward MACs
    timing: Timing | None = None
    note: str = ""
    key: tuple = field(default=())


def card_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def spec_peak(name: str) -> float | None:
    return next((peak for key, peak in PEAKS if key.lower() in name.lower()), None)


def matmul_peak(device, seconds: float = 1.5) -> float:
    """FLOP/s of a large bf16 (fp16 without bf16; fp32 on the CPU) matmul: what this card really reaches."""
    import torch

    from harness import bf16_ok

    if device.type == "cuda":
        dtype, n = (torch.bfloat16 if bf16_ok(device) else torch.float16), 8192
    else:
        dtype, n, seconds = torch.float32, 256, 0.2
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum().item()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 3:
        c = a @ b
        done += 1
        if device.type == "cuda" and done % 10 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    del c
    return 2 * n ** 3 * done / (time.perf_counter() - start)


def measure(row: Row, build, batches_fn, s: Settings) -> None:
    """Build, warm up (compiling, if asked) and time one row; any failure becomes the row's note."""
    stepper = batches = None
    try:
        stepper = build()
        batches = batches_fn()
        row.timing = time_steps(stepper, batches, s.batch, s.warmup, s.steps)
    except Exception as e:  # noqa: BLE001 — out of memory, a compile error: reported, the run goes on
        row.note = f"failed{' (with torch.compile)' if row.style.compile != 'off' else ''}: {first_line(e)}"
    finally:
        stepper = batches = None  # drop the model, optimizer and loader workers before freeing memory
        release()


def plan(s: Settings, ours: Style, orig: Style, root: Path | None) -> list[tuple[Row, object, object]]:
    """Every measurement, most important first: (row, build, batches)."""
    dev, size, b = s.device, s.size, s.batch
    out = []

    def add(kind, model, style, flops, build, batches, key):
        out.append((Row(kind, model, style, flops, key=key), build, batches))

    plain_ours = replace(ours, compile="off")
    for model in s.models:
        flops = 6 * vit_macs(model, size)
        for st in (plain_ours, orig):
            add("fine-tune, synthetic", model, st, flops, lambda m=model, st=st: finetune_stepper(m, size, st, dev),
                lambda: synthetic_batches(b, size, dev), ("ft-syn", model))
    for model in s.models:
        for dname, dec in s.mae_decoders.items():
            flops = 6 * mae_macs(model, size, dec[0], dec[1])
            for st in ((plain_ours, orig) if dname.startswith("paper") else (plain_ours,)):
                add(f"MAE pretrain, synthetic, decoder {dname}", model, st, flops,
                    lambda m=model, st=st, dec=dec: mae_stepper(m, size, st, dev, dec),
                    lambda: synthetic_batches(b, size, dev), ("mae", model, dname))
    if root is not None:
        cfg = finetune_cfg(size)
        paths = sorted(root.rglob("*.jpg"))
        for model in s.models:
            flops = 6 * vit_macs(model, size)
            for st in (plain_ours, orig):
                def batches(st=st):
                    jpeg, cached = engine_datasets(root, paths, cfg, train=True)
                    return loader_batches(cached if st.data == "cache" else jpeg, b, s.workers, dev)
                add("fine-tune, real loader", model, st, flops, lambda m=model, st=st: finetune_stepper(m, size, st, dev),
                    batches, ("ft-loader", model))
    if ours.compile != "off":
        for model in s.models:
            flops = 6 * vit_macs(model, size)
            add("fine-tune, synthetic", model, ours, flops, lambda m=model: finetune_stepper(m, size, ours, dev),
                lambda: synthetic_batches(b, size, dev), ("ft-syn", model))
    return out


def table(rows: list[Row], peak: float | None, measured: float, device_type: str) -> list[str]:
    orig = {r.key: r.timing.images_per_s for r in rows if r.style.name == "original-style" and r.timing}
    lines = ["| variant | model | style | images/s | step (ms) | vs original-style | MFU (datasheet peak) "
             "| MFU (measured matmul) | peak memory (GiB) | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        t = r.timing
        style = f"{r.style.name}: {r.style.describe(device_type)}" + (", pixel cache" if r.kind.endswith("loader") and r.style.data == "cache"
                                                            else ", JPEG + PIL" if r.kind.endswith("loader") else "")
        if t is None:
            lines.append(f"| {r.kind} | {r.model} | {style} | – | – | – | – | – | – | {r.note} |")
            continue
        rate = t.images_per_s * r.flops_per_image
        ratio = f"{t.images_per_s / orig[r.key]:.2f}×" if r.style.name != "original-style" and r.key in orig else ""
        mfu = f"{100 * rate / peak:.1f} %" if peak else "–"
        note = r.note or (f"first step {t.first_step_s:.0f} s (compiling)" if r.style.compile != "off" else "")
        lines.append(f"| {r.kind} | {r.model} | {style} | {t.images_per_s:,.0f} | {1e3 * t.step_s:.1f} | {ratio} | {mfu} "
                     f"| {100 * rate / measured:.1f} % | {t.peak_gib:.1f} | {note} |" if t.peak_gib is not None else
                     f"| {r.kind} | {r.model} | {style} | {t.images_per_s:,.1f} | {1e3 * t.step_s:.1f} | {ratio} | {mfu} "
                     f"| {100 * rate / measured:.1f} % | – | {note} |")
    return lines


def settings(args) -> Settings:
    import torch

    if args.tiny:
        torch.set_num_threads(1)  # a smoke test: one thread is quickest on a shared CPU
        return Settings(torch.device("cpu"), size=32, batch=4, warmup=1, steps=2, models=("vit_tiny",),
                        mae_decoders={"paper-shape (2 × 32)": (32, 2, 2), "small (1 × 16)": (16, 1, 2)},
                        loader_images=16, source_size=40, workers=0, compile=args.compile or "off",
                        compile_backend=args.compile_backend, budget=args.budget)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this benchmark is for GPU machines (run `--tiny` for its CPU smoke test)")
    workers = args.workers if args.workers >= 0 else max(0, min(8, (os.cpu_count() or 1) - 1))  # the engine's default
    return Settings(torch.device("cuda"), size=224, batch=args.batch, warmup=args.warmup, steps=args.steps,
                    models=("vit_base", "vit_large"),
                    mae_decoders={"paper (8 × 512)": (512, 8, 16), "small (2 × 256)": (256, 2, 8)},
                    loader_images=max(1024, (args.warmup + args.steps + 2) * args.batch), source_size=256,
                    workers=workers, compile=args.compile or "blocks", compile_backend=args.compile_backend,
                    budget=args.budget)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", "--cpu-smoke", action="store_true", help="CPU smoke test: vit_tiny, 32 px, a few steps")
    p.add_argument("--batch", type=int, default=64, help="per-GPU batch (the AU recipes': 64)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--workers", type=int, default=-1, help="loader workers for both styles (-1: the engine's default)")
    p.add_argument("--compile", choices=["off", "blocks", "full"], default=None,
                   help="torch.compile for ours (default: blocks on GPUs, off with --tiny)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests use 'eager')")
    p.add_argument("--budget", type=float, default=270.0,
                   help="seconds; measurements that would not fit are skipped (compiled rows reserve 90 s)")
    p.add_argument("--no-loader", action="store_true", help="skip the real-loader rows")
    p.add_argument("--out", type=Path, default=None, help="results file (default: bench/results/gpu_train-<card>.md; "
                                                          "none with --tiny)")
    args = p.parse_args()

    import torch

    start = time.perf_counter()
    s = settings(args)
    ours, orig = styles(s.device, s.compile, s.compile_backend)
    name = card_name(s.device)
    header = [f"# gpu_train: {name}", "",
              f"- torch {torch.__version__}, timm {_version('timm')}, CUDA {torch.version.cuda}, Python "
              f"{platform.python_version()}, {os.cpu_count()} CPUs; load average (1/5/15 min) at start: {load()}",
              f"- bf16: {'yes' if s.device.type == 'cuda' and torch.cuda.is_bf16_supported() else 'no'}; "
              f"batch {s.batch}, {s.size} px, {s.warmup} warm-up + {s.steps} timed steps; loader workers {s.workers}"]
    tmp = Path(tempfile.mkdtemp(prefix="fmae-gpu-train-"))
    rows: list[Row] = []
    try:
        peak = spec_peak(name) if s.device.type == "cuda" else None
        measured = matmul_peak(s.device)
        root = None
        if not args.no_loader:
            from fmae.data.pixel_cache import build_cache

            root = tmp / "faces"
            make_jpegs(root, s.loader_images, s.source_size)
            built = build_cache(root, size=s.size)
            header.append(f"- real loader: {s.loader_images} generated {s.source_size} px face-crop JPEGs; pixel cache at "
                          f"{s.size} px built in {built.seconds:.1f} s; train transform (crop, flip, RandAugment, erasing)")
        for row, build, batches in plan(s, ours, orig, root):
            rows.append(row)
            # a compiled row needs room for its compilation (a minute or so), any other row ~15 s
            if time.perf_counter() - start > s.budget - (COMPILE_RESERVE if row.style.compile != "off" else 0):
                row.note = f"skipped: would not fit the {s.budget:.0f} s budget"
                continue
            measure(row, build, batches, s)
            t = row.timing
            print(f"{row.kind} {row.model} {row.style.name}{' compiled' if row.style.compile != 'off' else ''}: "
                  + (f"{t.images_per_s:.1f} images/s" if t else row.note), flush=True)
        header.append(f"- peak: datasheet dense bf16 {peak / 1e12:.0f} TFLOP/s" if peak else
                      "- peak: no datasheet value for this device")
        header.append(f"- measured {'bf16' if s.device.type == 'cuda' else 'fp32'} matmul: {measured / 1e12:.3g} TFLOP/s; "
                      f"load average at end: {load()}; {time.perf_counter() - start:.0f} s in all")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = header + ["", *table(rows, peak, measured, s.device.type), "", *_verdict(rows, peak, s.device.type)]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    out = args.out or (None if args.tiny else HERE / "results" / f"gpu_train-{_slug(name)}.md")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")


def _verdict(rows: list[Row], peak: float | None, device_type: str) -> list[str]:
    """The issue's targets, checked on the synthetic fine-tuning rows (best of ours, compiled or not)."""
    lines = []
    for model in sorted({r.model for r in rows}):
        mine = [r for r in rows if r.model == model and r.kind == "fine-tune, synthetic" and r.timing]
        best = max((r for r in mine if r.style.name == "ours"), key=lambda r: r.timing.images_per_s, default=None)
        base = next((r for r in mine if r.style.name == "original-style"), None)
        if best is None or base is None:
            lines.append(f"- {model}: not measured")
            continue
        ratio = best.timing.images_per_s / base.timing.images_per_s
        mfu = best.timing.images_per_s * best.flops_per_image / peak if peak else None
        lines.append(f"- {model}: ours ({best.style.describe(device_type)}) {ratio:.2f}× original-style (target ≥ 1.5×: "
                     f"{'met' if ratio >= 1.5 else 'NOT met'})" + (f"; MFU {100 * mfu:.1f} %" if mfu is not None else "")
                     + (f" (ViT-L target ≥ 40 %: {'met' if mfu >= 0.4 else 'NOT met'})" if mfu is not None and model == "vit_large" else ""))
    return lines


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


if __name__ == "__main__":
    main()
