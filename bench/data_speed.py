"""Data loading speed: images/s of the pixel-cache fast path against JPEG + PIL decoding per item.

Both run the engine's own datasets (`fmae.data.torch.cached.image_set`) through a DataLoader with the same
batches, the same worker count and the same augmentations, and include the step that makes the model's
input on the device (here the CPU):

- original-style: each worker decodes a JPEG with PIL, runs the whole timm transform (train: random
  resized crop + flip + RandAugment + ToTensor + normalise + random erasing; eval: resize + ToTensor +
  normalise) and ships float32 batches;
- ours (`fmae data cache`, the engine's default when a cache exists): each worker reads uint8 pixels from
  the LMDB pixel cache and runs only the augmentations (train: crop, flip, RandAugment in OpenCV with
  timm's random draws, `fast_augment`; a second row runs timm's PIL ops, `fast_augment = false`) or
  nothing (eval); batches travel as uint8 and conversion, normalisation and erasing happen on the device,
  batched.

The images are generated face-crop-like JPEGs (smooth colour fields with fine texture, ~20 KB at 256 px)
of --source-size px; the cache is built at --size (the runs' input size). Also printed: single-process milliseconds per image of each
stage, which say where the time goes. Target (issue 8): ≥ 3× images/s on this machine.

Usage: python bench/data_speed.py [--images 1024] [--source-size 256] [--size 224] [--workers 2]
       [--against REV [--against-only]]
Writes bench/results/data_speed-<machine>.txt (or --out).
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

from harness import engine_datasets, finetune_cfg, load, machine, make_jpegs  # noqa: E402

TARGET = 3.0


def loader(data, batch: int, workers: int, device, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader

    from fmae.data.torch.datasets import EpochBatches

    sampler = EpochBatches(len(data), batch, seed, shuffle=True, drop_last=True)
    return DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator())


def images_per_s(data, batch: int, workers: int, device, batches: int, warmup: int = 2) -> float:
    """Batches through the loader and onto the device (`to_device`), after `warmup` batches (worker start)."""
    import torch

    dl = loader(data, batch, workers, device)
    done, start, epoch = 0, None, 0
    while True:
        data.epoch = dl.batch_sampler.epoch = epoch
        for x, y, _ in dl:
            x = data.to_device(x, device)
            y = y.to(device, non_blocking=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            done += 1
            if done == warmup:
                start = time.perf_counter()
            if done == warmup + batches:
                return batches * batch / (time.perf_counter() - start)
        epoch += 1


def stage_costs(plain, fast, n: int = 48) -> dict[str, float]:
    """Single-process ms per image of each stage (no loader): where the time goes. Transforms are seeded
    per item as in a loader worker (`seed_as_a_worker`)."""
    import torch
    from PIL import Image

    from fmae.data.torch.datasets import item_seed, load_rgb

    idx = list(range(min(n, len(plain))))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (and torch's pool stalls on a busy machine)

    def ms(fn) -> float:
        start = time.perf_counter()
        for i in idx:
            fn(i)
        return (time.perf_counter() - start) / len(idx) * 1e3

    out = {"decode JPEG (PIL)": ms(lambda i: load_rgb(plain.paths[i])),
           "read cached pixels (LMDB)": ms(lambda i: fast.cache.read(fast.keys[i]))}
    imgs = [load_rgb(plain.paths[i]) for i in idx]
    out["whole transform, per item (original-style)"] = ms(
        lambda i: as_a_worker(plain.transform, imgs[i], item_seed(0, 0, i)))
    if fast.train:
        cached = [fast.cache.read(fast.keys[i]) for i in idx]
        if fast.fast is not None:
            out["crop + flip + RandAugment, per item (ours, OpenCV, in the worker)"] = ms(
                lambda i: as_a_worker(fast.fast, cached[i], item_seed(0, 0, i)))
        pil = [Image.fromarray(x) for x in cached]
        out["crop + flip + RandAugment, per item (PIL, fast_augment = false)"] = ms(
            lambda i: as_a_worker(fast.transform, pil[i], item_seed(0, 0, i)))
    batch = torch.utils.data.default_collate([fast[i][0] for i in idx])
    cpu = torch.device("cpu")
    fast.to_device(batch, cpu)  # the first call builds the normalisation table
    start = time.perf_counter()
    for _ in range(3):
        fast.to_device(batch, cpu)
    out["convert + normalise (+ erase), batched (ours, on the device)"] = (time.perf_counter() - start) / 3 / len(idx) * 1e3
    torch.set_num_threads(threads)
    return out


def seed_as_a_worker(seed: int) -> None:
    """What `fmae.data.torch.datasets.seeded_transform` does in a loader worker before each item: seed the
    three generators the transforms draw from (in the main process it also saves and restores their
    states, ~0.1 ms an item that a worker does not pay; a run with num_workers = 0 does)."""
    import random

    import numpy as np
    import torch

    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def as_a_worker(transform, img, seed: int):
    seed_as_a_worker(seed)
    return transform(img)


def against_commit(rev: str, fast, n: int = 128, rounds: int = 25) -> list[str]:
    """The OpenCV augmentation (crop + flip + RandAugment) of this tree against fast_augment.py as it was
    at git revision `rev`, on the same cached pixels and item seeds, the two timed in turn `rounds` times
    (so both see the same load): the speed-up of the fast path itself. Each item is seeded as a loader
    worker seeds it; per round, wall time and the thread's CPU time (which a busy machine disturbs less:
    waiting for a core is not counted)."""
    import importlib.util
    import subprocess

    from fmae.data.torch.datasets import seeded_transform

    then_dir = Path(tempfile.mkdtemp())
    for name in ("fast_augment", "fast_warps"):  # fast_warps.py holds the geometric ops since issue 19
        made = subprocess.run(["git", "show", f"{rev}:fmae/data/torch/{name}.py"], cwd=HERE.parent,
                              capture_output=True, text=True)
        if made.returncode == 0:
            (then_dir / f"{name}.py").write_text(made.stdout)
    source = (then_dir / "fast_augment.py").read_text()
    if (then_dir / "fast_warps.py").exists():  # the revision's own geometric ops, not this tree's
        source = source.replace("from fmae.data.torch.fast_warps import", "from fast_warps_then import")
        (then_dir / "fast_warps.py").rename(then_dir / "fast_warps_then.py")
        sys.path.insert(0, str(then_dir))
    path = then_dir / "fast_augment_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fast_augment_then", path)
    then = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(then)
    pipelines = {"then": then.fast_pipeline(fast.transform), "now": fast.fast}
    modules = {"then": then, "now": sys.modules[type(fast.fast).__module__]}
    cached = [fast.cache.read(fast.keys[i % len(fast)]) for i in range(n)]
    as_worker = in_turn(pipelines, cached, rounds, as_a_worker)
    lines = [f"crop + flip + RandAugment per item, this tree against fast_augment.py at {rev} ({rounds} rounds in "
             f"turn, {n} items), seeded as in a loader worker:"]
    ratios = _ratio_lines(lines, as_worker)
    met = min(ratios["CPU time"][0], ratios["CPU time"][2]) >= 1.5
    lines.append(f"  target ≥ 1.5× (CPU time, best and rounds' median): {'met' if met else 'NOT met'}")
    lines.append("  the same through seeded_transform as the main process calls it (which saves and restores the "
                 "generators, ~0.1 ms an item; earlier results were timed so):")
    _ratio_lines(lines, in_turn(pipelines, cached, rounds, seeded_transform))
    costs = op_costs(modules, pipelines, cached)
    lines.append("  where the time goes, median CPU µs a call (then → now; ops: calls an item, each op drawn "
                 "with p = 0.5):")
    steps = sorted(set(costs["then"][0]) | set(costs["now"][0]), key=lambda k: -costs["then"][0].get(k, 0))
    lines.append("    steps: " + ", ".join(f"{k} {_us(costs['then'][0], k)} → {_us(costs['now'][0], k)}" for k in steps))
    ops = sorted(costs["then"][1], key=lambda k: -costs["then"][1][k][0] * costs["then"][1][k][1])
    lines += [f"    {k} ({costs['then'][1][k][1]:.3f}): {_us(costs['then'][1], k)} → {_us(costs['now'][1], k)}"
              for k in ops]
    return lines


def in_turn(pipelines: dict, cached: list, rounds: int, call) -> dict[str, dict[str, list[float]]]:
    """ms an item of each pipeline over `cached` by `call(pipeline, img, seed)`, the pipelines in turn each
    round: {"CPU time": {name: [per round]}, "wall": {…}}. Each item gets a fresh copy of its pixels, untimed,
    as a worker gets one from `PixelCache.read` (in the CPU's cache, not cold in memory)."""
    from fmae.data.torch.datasets import item_seed

    times: dict[str, dict[str, list[float]]] = {"CPU time": {k: [] for k in pipelines}, "wall": {k: [] for k in pipelines}}
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            wall = cpu = 0.0
            for i, img in enumerate(cached):
                pixels = img.copy()
                start, start_cpu = time.perf_counter(), time.thread_time()
                call(pipeline, pixels, item_seed(0, 0, i))
                cpu += time.thread_time() - start_cpu
                wall += time.perf_counter() - start
            times["CPU time"][name].append(cpu / len(cached) * 1e3)
            times["wall"][name].append(wall / len(cached) * 1e3)
    return times


def _ratio_lines(lines: list[str], times: dict[str, dict[str, list[float]]]) -> dict[str, tuple[float, ...]]:
    """Per clock: the best rounds' ratio, the medians' ratio, and the median of each round's then/now (the
    two timed back to back, so a burst of load that hits a round hits both)."""
    import statistics

    ratios = {}
    for label, of in times.items():
        best = {k: min(v) for k, v in of.items()}
        med = {k: statistics.median(v) for k, v in of.items()}
        paired = statistics.median(a / b for a, b in zip(of["then"], of["now"]))
        ratios[label] = best["then"] / best["now"], med["then"] / med["now"], paired
        lines.append(f"    {label}: then {best['then']:.3f} ms (median {med['then']:.3f}), now {best['now']:.3f} ms "
                     f"(median {med['now']:.3f}): {ratios[label][0]:.2f}× (medians {ratios[label][1]:.2f}×, "
                     f"rounds' median {paired:.2f}×)")
    return ratios


def _us(costs: dict, name: str) -> str:
    if name not in costs:
        return "—"
    value = costs[name][0] if isinstance(costs[name], tuple) else costs[name]
    return f"{value:.0f}"


def op_costs(modules: dict, pipelines: dict, cached: list, rounds: int = 4) -> dict[str, tuple[dict, dict]]:
    """Passes of each pipeline, in turn, with each step and each op of its module timed (thread CPU
    time): per pipeline, the median µs a call of each step, and of each op with its calls an item."""
    import statistics

    from fmae.data.torch.datasets import item_seed

    spent: dict[str, dict[str, list[float]]] = {k: {} for k in pipelines}

    def timed(into: dict[str, list[float]], name: str, fn):
        def run(*args, **kwargs):
            start = time.thread_time()
            out = fn(*args, **kwargs)
            into.setdefault(name, []).append(time.thread_time() - start)
            return out
        return run

    for epoch in range(rounds):
        for key, pipeline in pipelines.items():
            module, into = modules[key], spent[key]
            saved_ops, saved_steps = dict(module._OPS), pipeline.steps
            module._OPS.update({name: timed(into, name, fn) for name, fn in saved_ops.items()})
            pipeline.steps = [timed(into, "step " + type(step).__name__.strip("_"), step) for step in saved_steps]
            try:
                for i, img in enumerate(cached):
                    pixels = img.copy()  # as in_turn: what PixelCache.read hands a worker
                    seed_as_a_worker(item_seed(0, epoch, i))
                    pipeline(pixels)
            finally:
                module._OPS.update(saved_ops)
                pipeline.steps = saved_steps
    items = rounds * len(cached)
    out = {}
    for key, times in spent.items():
        steps = {k.removeprefix("step "): statistics.median(v) * 1e6 for k, v in times.items() if k.startswith("step ")}
        ops = {k: (statistics.median(v) * 1e6, len(v) / items) for k, v in times.items() if not k.startswith("step ")}
        out[key] = steps, ops
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--source-size", type=int, default=256, help="side of the JPEG files (face crops)")
    p.add_argument("--size", type=int, default=224, help="input size = cache size")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both paths")
    p.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the main process (workers have one each); 0 = torch's default")
    p.add_argument("--against", default=None, metavar="REV",
                   help="also time the OpenCV augmentation against fast_augment.py at this git revision")
    p.add_argument("--against-only", action="store_true",
                   help="with --against: only that comparison (no loader table, no stage costs)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    import torch

    from fmae.data.pixel_cache import build_cache

    device = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fmae-data-speed-"))
    try:
        lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                 f"torch {torch.__version__} ({torch.get_num_threads()} threads); device: {device}",
                 f"load average (1/5/15 min) at start: {load()}"]
        start = time.perf_counter()
        root = tmp / "bp4d"
        paths = make_jpegs(root, args.images, args.source_size)
        made = time.perf_counter() - start
        jpeg = sum(p.stat().st_size for p in paths) / len(paths)
        report = build_cache(root, size=args.size)
        lines.append(f"data: {len(paths)} face-crop-like JPEGs of {args.source_size} px (mean {jpeg / 1000:.1f} KB; "
                     f"made in {made:.0f} s); `fmae data cache` at {args.size} px: {report.seconds:.1f} s "
                     f"({len(paths) / report.seconds:.0f} images/s, {report.bytes / 1e6:.0f} MB)")
        only = args.against_only and args.against
        if not only:
            lines.append(f"loader: batch {args.batch}, {args.workers} workers for both, {args.batches} timed batches "
                         "after 2 warm-up batches, shuffled as in training")
            lines += ["", "| transform | original-style: JPEG + PIL, float32 batches (images/s) "
                          "| ours: pixel cache, uint8 batches, device finish (images/s) | speed-up |",
                      "|---|---:|---:|---:|"]
        ratios, stages = {}, {}
        for name, train, fast_augment in (("train (crop, flip, RandAugment, erasing)", True, True),
                                           ("train, fast_augment = false (timm's PIL ops from the cache)", True, False),
                                           ("eval (resize)", False, True)):
            if only and not (train and fast_augment):
                continue
            cfg = {**finetune_cfg(args.size), "fast_augment": fast_augment}
            plain, fast = engine_datasets(root, paths, cfg, train)
            if not only:
                a = images_per_s(plain, args.batch, args.workers, device, args.batches)
                b = images_per_s(fast, args.batch, args.workers, device, args.batches)
                ratios[name] = b / a
                lines.append(f"| {name} | {a:.0f} | {b:.0f} | {b / a:.2f}× |")
            if fast_augment and not only:
                stages[name] = stage_costs(plain, fast)
            if train and fast_augment and args.against:
                compared = against_commit(args.against, fast)
        lines.append("")
        lines.append(f"load average at end: {load()}")
        if stages:
            lines.append("")
            lines.append("single-process ms per image of each stage:")
        for name, costs in stages.items():
            lines.append(f"  {name}:")
            lines += [f"    {stage}: {ms:.2f} ms" for stage, ms in costs.items()]
        if args.against:
            lines += ["", *compared]
        if ratios:
            train_ratio = next(iter(ratios.values()))
            lines.append("")
            lines.append(f"target ≥ {TARGET:.0f}× images/s (train): {'met' if train_ratio >= TARGET else 'NOT met'} "
                         f"({train_ratio:.2f}×)")
        text = "\n".join(lines) + "\n"
        print(text)
        out = args.out or HERE / "results" / f"data_speed-{machine()}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
