"""Paired comparison speed: `fmae compare` over 3 folds × 3 seeds at BP4D's size (≈ 45,000 test frames ×
12 AUs per fold, 41 subjects in all), 2,000 bootstrap draws over subjects, F1@0.5, best-threshold F1
(tuned on test) and AUC (target: < 2 s, reading the 18 runs' predictions included).

The predictions are constructed (a fair model, AUC ≈ 0.8; group A a little better than B) and written as
each run's predictions/best.npz; `fmae.report.compare.compare_cells` reads and compares them, exactly as
`fmae compare` does after finding the runs. Usage: python bench/compare_speed.py [--draws 2000] [--repeat 3]
Writes bench/results/compare_speed-<machine>.txt.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
TARGET_S = 2.0


def write_cell(run: Path, subjects: list[str], frames: int, codes: list[int], edge: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    subject = np.array(subjects)[rng.integers(0, len(subjects), frames)]
    order = np.argsort(subject, kind="stable")
    subject = subject[order]
    rates = np.linspace(0.15, 0.6, len(codes))
    labels = (rng.random((frames, len(codes))) < rates).astype(np.uint8)
    logits = rng.normal(0.0, 1.0, labels.shape) + edge * (labels * 2.0 - 1.0) - 0.5
    probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    paths = np.array([f"{s}_T1/frame_{i:05d}.jpg" for i, s in enumerate(subject)])
    (run / "predictions").mkdir(parents=True)
    buf = io.BytesIO()
    np.savez(buf, probs=probs, labels=labels, paths=paths, subjects=subject, au_codes=np.array(codes), epoch=np.array(1))
    (run / "predictions" / "best.npz").write_bytes(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=45000, help="test frames per fold")
    args = ap.parse_args()

    from fmae.registry import get_dataset
    from fmae.report.compare import CellPair, clear_cache, compare_cells

    spec = get_dataset("bp4d")
    codes = list(spec.au_codes)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = []
        for fold in range(1, spec.num_folds + 1):
            people = sorted(spec.test_subjects(fold))
            for seed in range(3):
                runs = []
                for group, edge in (("a", 1.25), ("b", 1.2)):
                    run = Path(tmp) / f"{group}-f{fold}-s{seed}"
                    # both groups' runs of a cell see the same frames and labels (seeded by the cell)
                    write_cell(run, people, args.frames, codes, edge, seed=fold * 10 + seed)
                    runs.append(run)
                pairs.append(CellPair(fold, seed, runs[0], runs[1]))
        load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        times, cpu = [], []
        for _ in range(args.repeat):
            clear_cache()  # cold: every run's predictions read and counted again
            t0, c0 = time.perf_counter(), time.process_time()
            result = compare_cells(pairs, "bp4d", draws=args.draws)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        clear_cache()
        t0, c0 = time.perf_counter(), time.process_time()
        compare_cells(pairs, "bp4d", draws=args.draws, metrics=["f1", "f1_best"])
        f1_only = (time.perf_counter() - t0, time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        compare_cells(pairs, "bp4d", draws=args.draws, metrics=["f1", "f1_best"])
        warm = (time.perf_counter() - t0, time.process_time() - c0)
        load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    best = min(times)
    avg = result.metrics[0]
    lines = [
        f"compare_speed on {platform.machine()}-{os.cpu_count()}cpu, load average {load_before} before, "
        f"{load_after} after",
        f"{len(pairs)} cells (3 folds × 3 seeds), {args.frames:,} test frames × {len(codes)} AUs per fold, "
        f"{result.subjects} subjects, {args.draws:,} draws, metrics F1@0.5, F1 best-threshold (tuned on test), AUC",
        f"seconds per comparison, cold (reading and counting 18 runs' predictions included): best {best:.2f}, all "
        + ", ".join(f"{t:.2f}" for t in times),
        f"CPU seconds of this process per comparison (what an idle core would take): best {min(cpu):.2f}, all "
        + ", ".join(f"{t:.2f}" for t in cpu),
        f"F1@0.5 and best-threshold F1 only (no AUC: its pair counts are most of the work): {f1_only[0]:.2f} s wall, "
        f"{f1_only[1]:.2f} CPU s",
        f"again with the runs' counts kept (the app's next comparison with the same baseline): {warm[0]:.2f} s wall, "
        f"{warm[1]:.2f} CPU s",
        f"target < {TARGET_S:g} s wall: {'met' if best < TARGET_S else 'NOT met'} at this load; "
        f"{'met' if min(cpu) < TARGET_S else 'NOT met'} in CPU time",
        f"sanity: mean F1@0.5 Δ (A − B) {avg.delta['avg']:+.2f} pp, 95% interval [{avg.low['avg']:+.2f}, "
        f"{avg.high['avg']:+.2f}], sign-flip p {avg.p['avg']:.3f}, verdict {avg.verdict['avg']}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = HERE / "results" / f"compare_speed-{platform.machine()}-{os.cpu_count()}cpu.txt"
    out.write_text(text)


if __name__ == "__main__":
    main()
