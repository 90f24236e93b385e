"""What the quality benchmarks share: running the real `fmae` CLI as subprocesses, one run per runs
folder, and formatting the numbers they print."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ENV = dict(os.environ)  # the subprocesses' environment; a benchmark's main() sets their CPU threads here


def fmae(*args: object) -> subprocess.CompletedProcess:
    """`python -m fmae ARGS`; on failure the benchmark stops with the command and its output."""
    cmd = [sys.executable, "-m", "fmae", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return proc


def fresh(folder: Path) -> Path:
    """An empty runs folder for exactly one run (so the run is the folder's only child)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def only_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir()]
    if len(runs) != 1:
        sys.exit(f"{folder}: expected one run folder, found {len(runs)}")
    return runs[0]


def mean_std(values: list[float], sign: str = "") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{sign}.3f}"
    return f"{statistics.mean(values):{sign}.3f} ± {statistics.stdev(values):.3f}"


def fmt(v: object) -> str:
    """A value as `--set key=value` wants it."""
    return f'"{v}"' if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)
