"""How the app copes with a large runs folder and a long metrics log.

1. First paint and memory: `fmae-tui` (headless, as `App.run_test` runs it, 120×40) over runs folders of
   1,000, 10,000 and 100,000 finished AU runs (run.toml, status.json, summary.json, metrics.jsonl each).
   Each size runs in a fresh process so its peak RSS is its own. Reported: the time from the process's
   start to the first screen drawn (Runs, before any run is read), to the first rows, to the whole table
   filled, the peak RSS; then a filter by a word and by fields, a sort and its reverse, PgDn and End, and
   one changed run (the scanner's look over every folder, and the table's patch).
   Each size is opened twice: first without the app's runs index (runs/.runs-table.json: every folder is
   read, and the index written), then again with it (only changed folders are read).
   Then the Queue screen with 10,000 jobs (the runs of the 10,000 folder, every one shown).
2. One live update: what the Run screen's poller costs when one line is appended to a metrics.jsonl
   that already holds 10, 1,000 or 100,000 lines — it must not grow with the file (it reads only the
   new bytes).

    python bench/tui_speed.py [--sizes 1000,10000,100000] [--queue 10000] [--workdir DIR] [--out FILE]
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


def _toml(tables: dict[str, dict]) -> str:
    """run.toml as `RunDir.create` writes it (tomlkit), for the flat str/int/float/list tables used here."""
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out[:-1]) + "\n"


def make_runs(root: Path, n: int) -> None:
    """n finished BP4D runs with the files a real run has (4 epochs of metrics). The first goes through
    RunDir (the contract); the rest are written as plain files in its format, since RunDir's atomic,
    fsync'ed writes take ~30 ms a run here and 100,000 runs would take most of an hour. The bench checks
    that a plain-written run reads back as the RunDir-made one does."""
    from fmae.runs import RunDir, load_run, make_run_id

    rng = random.Random(0)
    # every run ended before the app opens (37 s apart, the newest a day ago): a run that ended after the
    # app opened is news, a toast each (100,000 runs over the last 30 days put ~30,000 in the future)
    start = datetime.now(timezone.utc) - timedelta(days=1, seconds=37 * n)
    provenance = {"fmae_version": "0.1.0", "git_commit": "0000000", "command": ["fmae", "train"], "host": "bench"}
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fold, seed, lam = i % 3 + 1, i // 3 % 5, (0.0, 0.5, 2.0)[i // 15 % 3]
        model = ("vit_tiny", "vit_small", "vit_base", "vit_large")[i // 45 % 4]
        config = {"task": "au", "dataset": "bp4d", "fold": fold, "seed": seed, "lambda_id": lam, "model": model,
                  "recipe": "fmae", "epochs": 4, "blr": 5e-4, "batch_size": 64}
        when = start + timedelta(seconds=37 * i)
        run_id = make_run_id("bp4d", model, seed, fold=fold, lambda_id=lam, now=when)
        records, lines = [], []
        t = when.timestamp()
        for epoch in range(1, 5):
            lines.append({"split": "train", "epoch": epoch, "step": 100 * epoch, "lr": 1e-4, "loss": 1 / epoch,
                          "t": t + epoch})
            f1 = {au: rng.random() for au in AUS}
            rec = {"split": "test", "epoch": epoch, "step": 100 * epoch, "f1_05": f1,
                   "f1_05_mean": statistics.mean(f1.values()), "f1_best": f1,
                   "f1_best_mean": statistics.mean(f1.values()), "auc": f1, "auc_mean": statistics.mean(f1.values())}
            lines.append({**rec, "t": t + epoch})
            records.append(rec)
        best = max(records, key=lambda r: r["f1_best_mean"])
        summary = {"run_id": run_id, "task": "au", "dataset": "bp4d", "metric": "f1_best_mean",
                   "metric_label": "mean F1 at the best threshold (tuned on test)", "epochs": 4,
                   "epochs_done": 4, "step": 400, "best_epoch": best["epoch"],
                   "best_value": best["f1_best_mean"], "best": best, "last": records[-1]}
        if i == 0:
            run = RunDir.create(root, run_id, config, provenance)
            run.mark_running(pid=1, host="bench", gpus="")
            for line in lines:
                run.append_metrics(line)
            run.write_summary(summary)
            run.mark_ended("done", exit_code=0)
            first = load_run(run.path)
            continue
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        status = {"state": "done", "created": stamp, "updated": stamp, "pid": 1, "host": "bench", "gpus": [],
                  "started": stamp, "heartbeat": stamp, "ended": stamp, "exit_code": 0}
        folder = root / run_id
        folder.mkdir()
        (folder / "run.toml").write_text(_toml({"config": config, "provenance": provenance}))
        (folder / "status.json").write_text(json.dumps(status, indent=1) + "\n")
        (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        if i == 1:
            again = load_run(folder)
            same = (again.state, set(again.config), set(again.status), set(again.summary or {}))
            assert same == (first.state, set(first.config), set(first.status), set(first.summary or {})), same
            assert (folder / "run.toml").read_text() == (first.path / "run.toml").read_text().replace(
                "fold = 1", f"fold = {fold}"), "run.toml differs from RunDir's"


def make_queue(runs: Path) -> None:
    """Every run of the folder as a finished job of its queue (the Queue screen lists them with `a`): a
    queue of finished jobs gives the Runs rows of the same folder no scheduler to revive."""
    from fmae.queue import DB_NAME, Queue
    from fmae.runs import RunDir

    if (runs / DB_NAME).exists():
        return
    q = Queue(runs)
    for entry in sorted(os.scandir(runs), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            q.finish(q.add(RunDir(entry.path)).id, "done")


async def _until(pilot, condition, what: str, timeout: float = 900.0) -> float:
    """Wait (10 ms steps: finer polling costs the app CPU it would not spend) for `condition`; the
    perf_counter when it held. A plain sleep, not `pilot.pause`, whose wait for every widget to process
    its messages is CPU of the bench's own, counted in the app's."""
    import asyncio  # the child imports it after its clock starts (the app's start includes it)

    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.perf_counter()


async def _timed(pilot, action) -> float:
    """ms from the call to the screen drawn after it."""
    t = time.perf_counter()
    action()
    await pilot.pause()
    return (time.perf_counter() - t) * 1e3


def child(runs: str, what: str) -> None:
    """Runs in its own process: open the app on the Runs screen (or the Queue's, showing every job), time
    the first paint, the first rows and the filled table, then filter and sort; print JSON."""
    t0 = time.perf_counter()
    import asyncio

    from fmae_tui.app import create_app
    from fmae_tui.screens.runs import RunsScreen

    if os.path.exists(os.path.join(runs, "queue.sqlite")):  # only then does the app load the scheduler
        import fmae.scheduler

        fmae.scheduler.ensure_running = lambda *a, **k: None  # a benchmark launches nothing
    n = sum(1 for e in os.scandir(runs) if e.is_dir() and not e.name.startswith("."))
    out: dict[str, float] = {"import_s": time.perf_counter() - t0}

    async def main() -> None:
        app = create_app(None, Path(runs))
        async with app.run_test(size=(120, 40)) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, RunsScreen), "the Runs screen")
            # Drawn: the screen refreshed with its footer's keys. Not `pilot.pause()`: that waits until the
            # process is idle (up to 1 s), which it is not while the first look reads in its thread.
            while True:
                await app.screen.wait_for_refresh()
                if app.screen.query("FooterKey"):
                    break
            await app.screen.wait_for_refresh()  # the keys mounted since the last refresh are drawn too
            out["first_paint_s"] = time.perf_counter() - t0
            use = resource.getrusage(resource.RUSAGE_SELF)
            out["first_paint_cpu_s"] = use.ru_utime + use.ru_stime
            screen = app.screen
            table = screen.table
            if what == "queue":
                from fmae_tui.screens.queue import QueueScreen

                # the Runs screen's first look (1 CPU-s at 10,000 runs, after the first paint) done first,
                # as it was before the look waited for that paint: the Queue's numbers are its own
                await _until(pilot, lambda: screen.scans > 0 and not screen.looking, "the Runs screen's look")
                t = time.perf_counter()
                await pilot.press("j")
                await _until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.polls > 0, "queue")
                queue = app.screen
                out["queue_first_s"] = time.perf_counter() - t
                queue.show_all = True
                t = time.perf_counter()
                queue.poll()
                out["queue_table_s"] = await _until(pilot, lambda: queue.table.row_count == n, "every job") - t
                out["rows"] = queue.table.row_count
                return
            out["first_rows_s"] = await _until(pilot, lambda: table.row_count > 0, "the first rows") - t0
            cap = float(os.environ.get("FMAE_TUI_BENCH_CAP", "900"))
            try:
                out["table_s"] = await _until(pilot, lambda: screen.scans > 0 and table.row_count == n, "every run",
                                              timeout=cap) - t0
                use = resource.getrusage(resource.RUSAGE_SELF)
                out["table_cpu_s"] = use.ru_utime + use.ru_stime  # every thread's: less swayed by the load
            except SystemExit:  # --cap: what was filled by then is the result
                out["table_s"], out["rows"] = float("nan"), table.row_count
                out["capped_s"] = time.perf_counter() - t0
                out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(json.dumps(out))
                os._exit(0)
            out["rows"] = table.row_count
            # The look's last step, writing the runs index when it read a folder, runs once the rows are shown
            # (0.2-0.3 CPU-s at 10,000 runs): the steps below are timed after it, on a settled screen.
            t = time.perf_counter()
            await _until(pilot, lambda: not screen.looking, "the look to settle")
            out["settle_s"] = time.perf_counter() - t
            await pilot.pause()
            out["filter_word_ms"] = await _timed(pilot, lambda: table.set_text_filter("f2"))
            out["filter_field_ms"] = await _timed(pilot, lambda: table.set_text_filter("λ:2 model:vit_base"))
            out["filter_clear_ms"] = await _timed(pilot, lambda: table.set_text_filter(""))
            out["sort_result_ms"] = await _timed(pilot, lambda: table.set_sort("result"))
            out["sort_reverse_ms"] = await _timed(pilot, table.reverse_sort)
            out["page_down_ms"] = await _timed(pilot, table.action_page_down)
            out["end_ms"] = await _timed(pilot, table.action_scroll_bottom)
            # One run changes on disk: the next look stats every folder, reads that one, patches its row.
            from fmae.run_watch import RunScanner
            scanner = RunScanner(Path(runs), slim=True, writes_index=False)  # as the alerts: the index is the screen's
            scanner.scan()
            one = sorted(table.runs)[n // 2]
            os.utime(Path(runs) / one)
            from fmae.run_watch import FINAL_EVERY  # a finished run's change shows within this many looks
            times, changed, removed = [], [], []
            for _ in range(FINAL_EVERY):
                t = time.perf_counter()
                got, gone = scanner.scan()
                times.append((time.perf_counter() - t) * 1e3)
                changed, removed = (got, gone) if got else (changed, removed)
            out["look_one_changed_ms"] = statistics.median(times)
            out["look_max_ms"] = max(times)
            assert [c[0].id for c in changed] == [one], changed
            out["apply_one_ms"] = await _timed(pilot, lambda: table.apply(changed, removed))

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
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    from fmae.run_watch import INDEX_NAME

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--queue", type=int, default=10000, help="jobs in the Queue screen's run (0: skip)")
    p.add_argument("--workdir", type=Path, default=None, help="where the run folders are made and kept "
                   "(default: a temp dir, removed after)")
    p.add_argument("--cap", type=float, default=900, help="stop waiting for a full table after this many "
                   "seconds and report the rows filled by then")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    load0 = os.getloadavg()
    lines = [f"# fmae-tui with many runs and long logs — {platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, {datetime.now():%Y-%m-%d %H:%M}",
             f"load average at the start {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} (1/5/15 min; other "
             "work on the machine slows every number here)", "",
             "first paint = process start to the Runs screen drawn (before any run is read; in brackets its CPU seconds); first rows = to "
             "the first rows drawn; table = every run in the table (CPU: the process's CPU seconds by then, all threads: on a quiet 2-core machine the wall time is about this); +index = then until the runs index is written (when the look read a folder; the steps after wait for it); RSS = the process's peak resident memory; "
             "filter/sort = the call and the screen drawn after it; look = the scanner's median look over 5 looks "
             "(max: the look that stats every folder) with one finished run changed, + the table's patch", ""]
    work = Path(tempfile.mkdtemp(prefix="fmae-tui-bench-")) if args.workdir is None else args.workdir

    def run_child(runs: Path, what: str) -> dict:
        proc = subprocess.run([sys.executable, __file__, "--child", str(runs), what], capture_output=True,
                              text=True, env={**os.environ, "FMAE_CONFIG": "", "FMAE_TUI_BENCH_CAP": str(args.cap),
                                   # the app's remembered sort and screens: its defaults, not the user's
                                   "FMAE_TUI_STATE": str(work / "tui-state.json")})
        if proc.returncode != 0:
            sys.exit(f"the app failed ({what}, {runs}):\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def add_row(n: int, opening: str, r: dict) -> None:
        label = f"{n} {opening}"
        if "capped_s" in r:
            lines.append(f"{label:>13}  {r['import_s']:>6.2f}s  {r['first_paint_s']:>10.2f}s  {r['first_rows_s']:>9.2f}s  "
                         f"stopped at {r['capped_s']:.0f} s (--cap) with {r['rows']} of {n} rows, "
                         f"{r['peak_rss_mib']:.0f} MiB so far  load {os.getloadavg()[0]:.1f}")
            print(lines[-1], file=sys.stderr)
            return
        assert r["rows"] == n, r
        lines.append(
            f"{label:>13}  {r['import_s']:>6.2f}s  {r['first_paint_s']:>5.2f}s ({r['first_paint_cpu_s']:.2f})  "
            f"{r['first_rows_s']:>9.2f}s  {r['table_s']:>7.2f}s  {r['table_cpu_s']:>6.2f}s  {r['settle_s']:>6.2f}s  "
            f"{r['peak_rss_mib']:>5.0f} MiB  "
            f"{r['filter_word_ms']:>6.0f}/{r['filter_field_ms']:.0f}/{r['filter_clear_ms']:.0f} ms  "
            f"{r['sort_result_ms']:>5.0f}/{r['sort_reverse_ms']:.0f} ms  {r['page_down_ms']:>3.0f}/{r['end_ms']:.0f} ms  "
            f"{r['look_one_changed_ms']:>5.0f}({r['look_max_ms']:.0f})+{r['apply_one_ms']:.0f} ms  {os.getloadavg()[0]:.1f}")
        print(lines[-1], file=sys.stderr)

    try:
        header = (f"{'runs  opened':>13}  {'import':>7}  {'first paint':>11}  {'first rows':>10}  {'table':>8}  {'CPU':>7}  "
                  f"{'+index':>7}  "
                  f"{'peak RSS':>9}  {'filter word/field/clear':>23}  {'sort/reverse':>12}  {'PgDn/End':>9}  "
                  f"{'look (max)+apply, 1 changed':>27}  load")
        lines.append(header)
        sizes = [int(x) for x in args.sizes.split(",") if x]
        for n in sizes:
            runs = work / f"runs-{n}"
            if not runs.is_dir():
                t = time.perf_counter()
                make_runs(runs, n)
                print(f"made {n} runs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for opening in ("first", "again"):
                if opening == "first":  # no index yet: the app reads every folder and writes it
                    (runs / INDEX_NAME).unlink(missing_ok=True)
                add_row(n, opening, run_child(runs, "runs"))
        if args.queue:
            runs = work / f"runs-{args.queue}"
            if not runs.is_dir():
                make_runs(runs, args.queue)
            make_queue(runs)
            r = run_child(runs, "queue")
            assert r["rows"] == args.queue, r
            lines += ["", f"Queue screen with {args.queue} jobs (all shown, `a`): opened and first listing "
                      f"{r['queue_first_s']:.2f} s, every job in the table {r['queue_table_s']:.2f} s, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB (load {os.getloadavg()[0]:.1f})"]
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
