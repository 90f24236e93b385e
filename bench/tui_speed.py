"""How the app copes with a large runs folder and a long metrics log.

1. First paint and memory: `fmae-tui` (headless, as `App.run_test` runs it, 120×40) over runs folders of
   1,000 and 10,000 finished AU runs (run.toml, status.json, summary.json, metrics.jsonl each). Each size
   runs in a fresh process so its peak RSS is its own. Reported: the time from the process's start to
   the first screen drawn (Runs, before any run is read), to the whole table filled, and the peak RSS.
2. One live update: what the Run screen's poller costs when one line is appended to a metrics.jsonl
   that already holds 10, 1,000 or 100,000 lines — it must not grow with the file (it reads only the
   new bytes).

    python bench/tui_speed.py [--sizes 1000,10000] [--out bench/results/tui_speed-<machine>.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

AUS = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]


def make_runs(root: Path, n: int) -> None:
    """n finished BP4D runs with the files a real run has (4 epochs of metrics), through RunDir."""
    from fmae.runs import RunDir, make_run_id

    rng = random.Random(0)
    start = datetime.now(timezone.utc) - timedelta(days=30)
    provenance = {"fmae_version": "0.1.0", "git_commit": "0000000", "command": ["fmae", "train"], "host": "bench"}
    for i in range(n):
        fold, seed, lam = i % 3 + 1, i // 3 % 5, (0.0, 0.5, 2.0)[i // 15 % 3]
        model = ("vit_tiny", "vit_small", "vit_base", "vit_large")[i // 45 % 4]
        config = {"task": "au", "dataset": "bp4d", "fold": fold, "seed": seed, "lambda_id": lam, "model": model,
                  "recipe": "fmae", "epochs": 4, "blr": 5e-4, "batch_size": 64}
        run_id = make_run_id("bp4d", model, seed, fold=fold, lambda_id=lam, now=start + timedelta(seconds=37 * i))
        run = RunDir.create(root, run_id, config, provenance)
        run.mark_running(pid=1, host="bench", gpus="")
        records = []
        for epoch in range(1, 5):
            run.append_metrics({"split": "train", "epoch": epoch, "step": 100 * epoch, "lr": 1e-4, "loss": 1 / epoch})
            f1 = {au: rng.random() for au in AUS}
            rec = {"split": "test", "epoch": epoch, "step": 100 * epoch, "f1_05": f1,
                   "f1_05_mean": statistics.mean(f1.values()), "f1_best": f1,
                   "f1_best_mean": statistics.mean(f1.values()), "auc": f1, "auc_mean": statistics.mean(f1.values())}
            run.append_metrics(rec)
            records.append(rec)
        best = max(records, key=lambda r: r["f1_best_mean"])
        run.write_summary({"run_id": run.id, "task": "au", "dataset": "bp4d", "metric": "f1_best_mean",
                           "metric_label": "mean F1 at the best threshold (tuned on test)", "epochs": 4,
                           "epochs_done": 4, "step": 400, "best_epoch": best["epoch"],
                           "best_value": best["f1_best_mean"], "best": best, "last": records[-1]})
        run.mark_ended("done", exit_code=0)


def child(runs: str) -> None:
    """Runs in its own process: open the app, time the first paint and the filled table, print JSON."""
    t0 = time.perf_counter()
    import asyncio

    from fmae_tui.app import create_app
    from fmae_tui.screens.runs import RunsScreen

    n = sum(1 for e in os.scandir(runs) if e.is_dir() and not e.name.startswith("."))
    imported = time.perf_counter() - t0
    out: dict[str, float] = {"import_s": imported}

    async def main() -> None:
        app = create_app(None, Path(runs))
        async with app.run_test(size=(120, 40)) as pilot:
            while not isinstance(app.screen, RunsScreen):
                await pilot.pause(0.001)
            await pilot.pause()  # one refresh: the screen is drawn
            out["first_paint_s"] = time.perf_counter() - t0
            screen = app.screen
            while screen.scans == 0 or screen.table.row_count < n:
                await pilot.pause(0.01)
            await pilot.pause()
            out["table_s"] = time.perf_counter() - t0
            out["rows"] = screen.table.row_count

    asyncio.run(main())
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def live_update(lines: int, repeats: int = 200) -> dict[str, float]:
    """Median time and bytes read of one poll after one appended line, with `lines` already there."""
    from fmae.runs import RunDir, make_run_id
    from fmae.run_watch import RunPoller

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(Path(tmp), make_run_id("bp4d", "vit_tiny", 0, fold=1, lambda_id=0.0), {"task": "au"}, {})
        line = json.dumps({"split": "train", "epoch": 1, "step": 1, "lr": 1e-4, "loss": 0.5}) + "\n"
        with open(run.metrics_path, "w") as f:
            f.write(line * lines)
        poller = RunPoller(run.path)
        poller.poll()  # the first look reads everything, as the Run screen's first does
        times, sizes = [], []
        for _ in range(repeats):
            with open(run.metrics_path, "a") as f:
                f.write(line)
            before = poller.metrics.bytes_read
            t = time.perf_counter()
            update = poller.poll()
            times.append(time.perf_counter() - t)
            sizes.append(poller.metrics.bytes_read - before)
            assert len(update.records) == 1
        return {"median_us": statistics.median(times) * 1e6, "bytes": statistics.median(sizes),
                "file_mib": run.metrics_path.stat().st_size / 2**20}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--workdir", type=Path, default=None, help="where the run folders are made (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    lines = [f"# fmae-tui with many runs and long logs — {platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, {datetime.now():%Y-%m-%d}",
             f"load average at the start {load0:.1f} (other work on the machine slows every number here)", "",
             "first paint = process start to the Runs screen drawn (before any run is read); table = every run "
             "in the table; RSS = the process's peak resident memory", "",
             f"{'runs':>7}  {'import':>7}  {'first paint':>11}  {'table':>8}  {'peak RSS':>9}"]
    work = Path(tempfile.mkdtemp(prefix="fmae-tui-bench-")) if args.workdir is None else args.workdir
    try:
        for n in [int(x) for x in args.sizes.split(",")]:
            runs = work / f"runs-{n}"
            if not runs.is_dir():
                t = time.perf_counter()
                make_runs(runs, n)
                print(f"made {n} runs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            proc = subprocess.run([sys.executable, __file__, "--child", str(runs)], capture_output=True, text=True,
                                  env={**os.environ, "FMAE_CONFIG": ""})
            if proc.returncode != 0:
                sys.exit(f"the app failed with {n} runs:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            assert r["rows"] == n, r
            lines.append(f"{n:>7}  {r['import_s']:>6.2f}s  {r['first_paint_s']:>10.2f}s  {r['table_s']:>7.2f}s  "
                         f"{r['peak_rss_mib']:>6.0f} MiB")
            print(lines[-1], file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lines += ["", "one live update (Run screen poller) after one line is appended to metrics.jsonl:", "",
              f"{'lines before':>12}  {'file':>9}  {'poll':>9}  {'bytes read':>10}"]
    for n in (10, 1_000, 100_000):
        r = live_update(n)
        lines.append(f"{n:>12,}  {r['file_mib']:>6.2f} MiB  {r['median_us']:>6.0f} µs  {r['bytes']:>10.0f}")
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or HERE / "results" / f"tui_speed-{platform.machine()}-{os.cpu_count()}cpu.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
