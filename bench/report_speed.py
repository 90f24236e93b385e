"""`fmae report` over many runs (target: 10,000 runs in < 3 s once the run cache is warm).

One real run is trained (`fmae train`, vit_tiny, 32 px, 1 epoch on synthetic BP4D faces); its run.toml,
status.json and summary.json are then copied into `--runs` run folders that differ in what a report
groups and averages over: 40 groups (4 models × 2 recipes × 5 λ), each 3 folds × up to 84 seeds. The
times are of the real CLI (`python -m fmae report`, a new process each, its start-up included):
- cold: no `.run-cache.json` yet (every folder read, the cache written);
- warm: the cache holds every run (only stamps taken);
- after 1% of the runs changed (their summary.json rewritten, as an evaluation does);
each as the Rich table (the default) and as CSV, the best of `--repeat` for the warm ones.

Usage: python bench/report_speed.py [--runs 10000] [--repeat 3]
Writes bench/results/report_speed-<machine>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_S = 3.0
MODELS = ("vit_tiny", "vit_small", "vit_base", "vit_large")
RECIPES = ("fmae", "fmae_iat")
LAMBDAS = (0.0, 0.5, 1.0, 2.0, 4.0)


def fmae(*args, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fmae", *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"fmae {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc


def one_real_run(tmp: Path, env: dict) -> Path:
    data, runs = tmp / "synth", tmp / "seed-run"
    fmae("synth", "bp4d", "--out", data, "--subjects", 6, "--frames", 8, "--size", 48, env=env)
    fmae("train", "bp4d", "--fold", 1, "--root", data, "--labels", data / "labels.jsonl", "--model", "vit_tiny",
         "--batch-size", 8, "--epochs", 1, "--set", "input_size=32", "--set", "num_workers=0", "--runs-dir", runs,
         env=env)
    (run,) = [d for d in runs.iterdir() if d.is_dir()]
    return run


def clone(src: Path, runs: Path, n: int) -> None:
    """n run folders from one: each its own id, fold, seed, model, recipe and λ in run.toml."""
    toml, status, summary = ((src / f).read_text() for f in ("run.toml", "status.json", "summary.json"))
    per_group = 3 * 84
    for i in range(n):
        g = i // per_group
        fold, seed = i % 3 + 1, (i % per_group) // 3
        model, recipe = MODELS[g % 4], RECIPES[g // 4 % 2]
        lam = LAMBDAS[g // 8 % 5]
        rid = f"20261129-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-bp4d-f{fold}-s{seed}-l{lam:g}-{model}-{i:04x}"
        config, provenance = toml.split("\n[provenance]", 1)  # only [config]'s values change
        t = re.sub(r"(?m)^fold = \d+$", f"fold = {fold}", config)
        t = re.sub(r"(?m)^seed = \d+$", f"seed = {seed}", t)
        t = re.sub(r'(?m)^model = "[^"]*"$', f'model = "{model}"', t)
        t = re.sub(r'(?m)^recipe = "[^"]*"$', f'recipe = "{recipe}"', t)
        t = re.sub(r"(?m)^lambda_id = [0-9.e+-]+$", f"lambda_id = {lam!r}", t) + "\n[provenance]" + provenance
        d = runs / rid
        d.mkdir(parents=True)
        (d / "run.toml").write_text(t)
        (d / "status.json").write_text(status)
        (d / "summary.json").write_text(summary.replace(src.name, rid))


CPU: dict[float, float] = {}  # wall seconds -> the same run's CPU seconds (user + system)


def timed_report(runs: Path, fmt: str, env: dict) -> float:
    """Wall seconds of one `fmae report`; its CPU seconds in CPU (on this shared machine the wall time is
    mostly waiting for a core)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    fmae("report", "--runs-dir", runs, "--format", fmt, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[wall] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall


def cpu(wall: float) -> str:
    return f"{wall:.2f} | {CPU[wall]:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    env.update(COLUMNS="120", FMAE_NO_AUTOSTART="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = one_real_run(tmp, env)
        if json.loads((src / "status.json").read_text())["state"] != "done":
            sys.exit(f"{src}: the seed run did not finish")
        runs = tmp / "runs"
        start = time.perf_counter()
        clone(src, runs, args.runs)
        made = time.perf_counter() - start
        load_before = os.getloadavg()
        cold = {fmt: timed_report(runs, fmt, env) for fmt in ("table",)}
        cold_csv_cache_kept = timed_report(runs, "csv", env)
        warm = {fmt: min(timed_report(runs, fmt, env) for _ in range(args.repeat)) for fmt in ("table", "csv")}
        changed = sorted(d for d in runs.iterdir() if d.is_dir())[:: 100]
        for d in changed:  # a fresh evaluation: the summary rewritten (the atomic write replaces the file)
            text = (d / "summary.json").read_text()
            tmp_file = d / ".summary.json.tmp"
            tmp_file.write_text(text)
            os.replace(tmp_file, d / "summary.json")
        time.sleep(2.1)  # older than the cache's 2 s "too recent to trust" window, as a finished write is
        after_change = timed_report(runs, "csv", env)
        start = time.perf_counter()
        fmae("--version", env=env)
        startup = time.perf_counter() - start
        cache_mib = (runs / ".run-cache.json").stat().st_size / 2 ** 20
        load_after = os.getloadavg()
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"load average (1/5/15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after {', '.join(f'{x:.2f}' for x in load_after)}",
        f"runs: {args.runs:,} done BP4D runs in 40 groups × 3 folds × up to 84 seeds (made in {made:.0f} s); "
        f"run cache {cache_mib:.0f} MiB",
        "",
        "| fmae report (a new process each, start-up included) | wall s | CPU s |",
        "|---|---:|---:|",
        f"| cold (no cache: every folder read, cache written), table | {cpu(cold['table'])} |",
        f"| warm cache, csv (first after the cold run) | {cpu(cold_csv_cache_kept)} |",
        f"| warm cache, table (best of {args.repeat}) | {cpu(warm['table'])} |",
        f"| warm cache, csv (best of {args.repeat}) | {cpu(warm['csv'])} |",
        f"| after {len(changed)} summaries changed, csv | {cpu(after_change)} |",
        f"| `fmae --version` (the interpreter's and CLI's start-up alone) | {startup:.2f} | |",
        "",
        f"target: warm < {TARGET_S:.0f} s (wall): {'met' if max(warm.values()) < TARGET_S else 'NOT met'}; "
        f"in CPU seconds {'met' if max(CPU[w] for w in warm.values()) < TARGET_S else 'NOT met'}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or HERE / "results" / f"report_speed-{platform.machine()}-{os.cpu_count()}cpu.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
