"""Chaos soak: random faults on real tiny runs under the real scheduler, then the promises checked.

Faults (bounded in count and time): kill -9 of the scheduler (alone, and while a slow writer holds the
queue's SQLite write lock, so a launch is caught between its claim and its spawn), kill -9 of a
trainer, SIGTERM of a trainer, SIGSTOP … SIGCONT of a trainer, concurrent `fmae scheduler start`s,
`fmae queue cancel`, `fmae queue retry`. A scheduler that is gone is brought back only by commands
that read the queue (`queue ls`, `scheduler status`, `scheduler start`), as a user would.

Then, once every run is done: every run folder has its queue row and vice versa; every file parses;
each run's steps strictly increase and its metrics.jsonl equals an unbroken run's (timings aside); each
train.log has one "done:" line; no two trainers of one run were ever alive together (sampled every
0.2 s); no process is left behind; every `scheduler start` printed the pid of the lock's holder.

Usage: python bench/chaos_soak.py --minutes 30 [--runs-at-once 4] [--max-faults 400] [--out FILE]
All runs are one configuration (queued with --force), so one unbroken reference run serves for all.
Exit code 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOLATILE = {"t", "images_per_s", "seconds"}  # timings: the only fields two equal runs may differ in


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="fmae-soak-"))
        self.data, self.project = self.work / "data", self.work / "project"
        self.runs = self.project / "runs"
        self.env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
        # One thread per trainer: on a small shared machine torch's default stalls (bench/README.md).
        self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", NO_COLOR="1")
        self.train_args = ["--model", "vit_tiny", "--epochs", str(args.epochs), "--set", "input_size=32",
                           "--set", f"num_workers={args.workers}", "--set", "batch_size=8", "--set",
                           "warmup_epochs=0", "--set", "log_every=1", "--root", str(self.data),
                           "--labels", str(self.data / "labels.jsonl")]
        self.faults: Counter = Counter()
        self.notes: list[str] = []  # what went wrong (check failures)
        self.max_alive: dict[str, int] = {}
        self.samples = 0
        self.stop_sampling = threading.Event()
        self.added = 0

    # --- plumbing ---------------------------------------------------------------------------------
    def fmae(self, *args, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fmae", *map(str, args)], cwd=self.project, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def fail(self, text: str) -> None:
        self.notes.append(f"{now()} {text}")
        print("CHECK FAILED:", text, flush=True)

    def statuses(self) -> dict[str, dict]:
        out = {}
        for p in sorted(self.runs.iterdir()) if self.runs.exists() else []:
            if p.is_dir() and not p.name.startswith("."):
                try:
                    out[p.name] = json.loads((p / "status.json").read_text())
                except (OSError, ValueError):
                    pass
        return out

    def jobs(self) -> list[dict]:
        db = sqlite3.connect(self.runs / "queue.sqlite", timeout=30)
        try:
            rows = db.execute("SELECT id, run_id, state FROM jobs ORDER BY id").fetchall()
        finally:
            db.close()
        return [{"id": i, "run_id": r, "state": s} for i, r, s in rows]

    def holder_pid(self) -> int | None:
        from fmae.scheduler import holder

        info = holder(self.runs)
        return int(info["pid"]) if info and info.get("pid") else None

    def our_processes(self) -> dict[int, list[str]]:
        """Live (non-zombie) processes whose command line mentions the soak's folder."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X"):
                continue
            text = [a.decode("utf-8", "replace") for a in args if a]
            if any(str(self.work) in a for a in text):
                found[int(entry)] = text
        return found

    def trainers(self) -> dict[str, list[int]]:
        """Run folder name → pids of live `fmae exec` trainers. The scheduler starts each in a session of
        its own, so a trainer leads its session; its DataLoader workers (forks with the same command
        line, which may outlive a killed trainer for a few seconds) do not."""
        procs = self.our_processes()
        by_run: dict[str, list[int]] = {}
        for pid, args in procs.items():
            if "exec" not in args:
                continue
            try:
                session = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[3])
            except (OSError, IndexError, ValueError):
                continue
            if session != pid:
                continue
            run = Path(args[args.index("exec") + 1]).name
            by_run.setdefault(run, []).append(pid)
        return by_run

    def sampler(self) -> None:
        while not self.stop_sampling.wait(0.2):
            for run, pids in self.trainers().items():
                self.max_alive[run] = max(self.max_alive.get(run, 0), len(pids))
                if len(pids) > 1:
                    self.fail(f"{run}: {len(pids)} trainers alive at once (pids {pids})")
            self.samples += 1

    # --- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        from fmae.data.synth.writer import SynthOptions, synthesize
        from fmae.registry import get_dataset

        spec = get_dataset("bp4d")
        synthesize(spec, self.data, SynthOptions(frames=8, size=48, seed=3, subjects=spec.num_folds * 2, raw=True,
                                                 per_fold_files=True))
        for args in (["init", self.project], ["config", "set", "compute.cpu_slots", self.args.slots]):
            r = subprocess.run([sys.executable, "-m", "fmae", *map(str, args)], cwd=self.work if args[0] == "init"
                               else self.project, env=self.env, capture_output=True, text=True, timeout=120)
            if r.returncode:
                sys.exit(f"fmae {args}: {r.stderr}")
        # The unbroken reference: the same configuration, trained once with no fault, in its own folder.
        ref_runs = self.work / "reference"
        r = self.fmae("train", "bp4d", "--fold", "1", "--seed", "0", *self.train_args, "--runs-dir", ref_runs, "-q",
                      timeout=900)
        if r.returncode:
            sys.exit(f"reference run failed: {r.stderr[-2000:]}")
        ref = next(p for p in ref_runs.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.reference = self.records(ref)
        print(f"{now()} reference run: {len(self.reference)} records", flush=True)

    def records(self, run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
                for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]

    def add_run(self) -> None:
        r = self.fmae("queue", "add", "bp4d", "--folds", "1", "--seeds", "0", *self.train_args, "--gpus-per-run", "0",
                      "--force", "--no-scheduler")
        if r.returncode:
            self.fail(f"queue add: {r.stderr.strip()[-300:]}")
        else:
            self.added += 1

    # --- faults -----------------------------------------------------------------------------------
    def running_pids(self) -> list[int]:
        return [p for pids in self.trainers().values() for p in pids]

    def signal_group(self, pid: int, sig: int) -> bool:
        try:
            os.killpg(os.getpgid(pid), sig)
            return True
        except OSError:
            return False

    def revive(self) -> None:
        """As a user would notice: a command that reads the queue."""
        how = self.rng.choice(["queue-ls", "scheduler-status", "scheduler-start"])
        if how == "scheduler-start":
            self.start_and_check(self.fmae("scheduler", "start"))
        else:
            self.fmae(*(["queue", "ls"] if how == "queue-ls" else ["scheduler", "status"]))

    def start_and_check(self, result: subprocess.CompletedProcess) -> None:
        """`scheduler start` must print the pid of the process that holds the lock."""
        import re

        said = re.search(r"pid (\d+)", result.stdout)
        holder = self.holder_pid()
        if result.returncode == 0 and said and holder and int(said.group(1)) != holder:
            time.sleep(0.5)  # the holder may have been killed by a fault since; ask again
            holder2 = self.holder_pid()
            if holder2 == holder:
                self.fail(f"scheduler start printed pid {said.group(1)} but pid {holder} holds the lock")

    def fault(self) -> str:
        kinds = ["scheduler_kill9"] * 3 + ["slow_writer_scheduler_kill9"] * 2 + ["trainer_kill9"] * 3 + \
                ["trainer_sigterm", "trainer_stop_cont", "concurrent_starts", "cancel"] + ["retry"] * 2
        kind = self.rng.choice(kinds)
        if kind == "scheduler_kill9":
            pid = self.holder_pid()
            if not pid:
                self.revive()
                return "revive"
            os.kill(pid, signal.SIGKILL)
        elif kind == "slow_writer_scheduler_kill9":
            pid = self.holder_pid()
            if not pid:
                self.revive()
                return "revive"
            db = sqlite3.connect(self.runs / "queue.sqlite", timeout=30, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")  # a slow writer: the scheduler's next claim blocks on it
            time.sleep(self.rng.uniform(0.3, 4.0))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(self.rng.uniform(0, 1.0))
            db.execute("ROLLBACK")
            db.close()
        elif kind in ("trainer_kill9", "trainer_sigterm", "trainer_stop_cont"):
            pids = self.running_pids()
            if not pids:
                return "none"
            pid = self.rng.choice(pids)
            if kind == "trainer_kill9":
                self.signal_group(pid, signal.SIGKILL)
            elif kind == "trainer_sigterm":
                self.signal_group(pid, signal.SIGTERM)
            else:
                self.signal_group(pid, signal.SIGSTOP)
                time.sleep(self.rng.uniform(1.0, 5.0))
                self.signal_group(pid, signal.SIGCONT)
        elif kind == "concurrent_starts":
            procs = [subprocess.Popen([sys.executable, "-m", "fmae", "scheduler", "start"], cwd=self.project,
                                      env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(3)]
            for p in procs:
                out, err = p.communicate(timeout=120)
                self.start_and_check(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        elif kind == "cancel":
            active = [j for j in self.jobs() if j["state"] in ("queued", "running")]
            if not active:
                return "none"
            self.fmae("queue", "cancel", self.rng.choice(active)["id"])
        elif kind == "retry":
            ended = [str(j["id"]) for j in self.jobs() if j["state"] in ("failed", "cancelled")]
            if not ended:
                return "none"
            self.fmae("queue", "retry", *ended, "--no-scheduler")
        self.faults[kind] += 1
        return kind

    # --- the soak ---------------------------------------------------------------------------------
    def run(self) -> int:
        began = time.time()
        load_before = uptime()
        self.setup()
        for _ in range(self.args.runs_at_once):
            self.add_run()
        self.start_and_check(self.fmae("scheduler", "start"))
        sampler = threading.Thread(target=self.sampler, daemon=True)
        sampler.start()
        t0 = time.time()
        deadline = t0 + self.args.minutes * 60
        total = 0
        while time.time() < deadline and total < self.args.max_faults:
            time.sleep(self.rng.expovariate(1.0 / self.args.fault_every))
            if time.time() >= deadline:
                break
            jobs = self.jobs()
            unfinished = sum(j["state"] in ("queued", "launching", "running") for j in jobs)
            if unfinished < self.args.runs_at_once and self.added < self.args.max_runs:
                self.add_run()
            kind = self.fault()
            if kind not in ("none", "revive"):
                total += 1
                print(f"{now()} fault {total}: {kind}", flush=True)
            if self.rng.random() < self.args.revive_prob:
                self.revive()
        fault_minutes = (time.time() - t0) / 60
        drained = self.drain()
        self.stop_sampling.set()
        sampler.join()
        self.check(drained)
        load_after = uptime()
        self.report(began, fault_minutes, total, load_before, load_after)
        return 1 if self.notes else 0

    def drain(self) -> bool:
        """Faults over: retry what failed or was cancelled until every run is done."""
        end = time.time() + self.args.drain_minutes * 60
        while time.time() < end:
            jobs = self.jobs()
            ended = [str(j["id"]) for j in jobs if j["state"] in ("failed", "cancelled")]
            if ended:
                self.fmae("queue", "retry", *ended)
            if jobs and all(j["state"] == "done" for j in jobs):
                break
            self.fmae("queue", "ls")  # brings the scheduler back if a fault left none
            time.sleep(3)
        else:
            self.fail("drain: not every run was done in time: "
                      + ", ".join(f"{n} {s}" for s, n in Counter(j["state"] for j in self.jobs()).items()))
            return False
        self.fmae("scheduler", "stop")
        return True

    # --- the promises -------------------------------------------------------------------------------
    def check(self, drained: bool) -> None:
        jobs = self.jobs()
        folders = {p.name for p in self.runs.iterdir() if p.is_dir() and not p.name.startswith(".")}
        rows = {j["run_id"] for j in jobs}
        if folders != rows:
            self.fail(f"folders without a row: {sorted(folders - rows)}; rows without a folder: {sorted(rows - folders)}")
        db = sqlite3.connect(self.runs / "queue.sqlite")
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            self.fail("queue.sqlite: integrity_check failed")
        db.close()
        self.equal_runs = 0
        for name in sorted(folders):
            run = self.runs / name
            try:
                status = json.loads((run / "status.json").read_text())
                tomllib.loads((run / "run.toml").read_text())
                if (run / "summary.json").exists():
                    json.loads((run / "summary.json").read_text())
                raw = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            except (OSError, ValueError) as e:
                self.fail(f"{name}: a file does not parse: {e}")
                continue
            if drained and status.get("state") != "done":
                self.fail(f"{name}: ended {status.get('state')}: {status.get('error')}")
                continue
            steps = [r["step"] for r in raw if r.get("split") == "train"]
            if any(b <= a for a, b in zip(steps, steps[1:])):
                self.fail(f"{name}: train steps do not strictly increase: {steps}")
            got = [{k: v for k, v in r.items() if k not in VOLATILE} for r in raw]
            if got != self.reference:
                self.fail(f"{name}: metrics.jsonl differs from the unbroken run's ({len(got)} vs "
                          f"{len(self.reference)} records)")
            else:
                self.equal_runs += 1
            done_lines = (run / "train.log").read_text(errors="replace").count(" done: ")
            if done_lines != 1:
                self.fail(f"{name}: train.log has {done_lines} 'done:' lines")
            if status.get("step") != self.reference[-1]["step"]:
                self.fail(f"{name}: status.json says step {status.get('step')}, the run's last is "
                          f"{self.reference[-1]['step']}")
        self.runs_checked = len(folders)
        deadline = time.time() + 60
        left = self.our_processes()
        while left and time.time() < deadline:
            time.sleep(1)
            left = self.our_processes()
        if left:
            self.fail(f"processes left behind: {[' '.join(a[:5]) for a in left.values()]}")

    def report(self, began: float, fault_minutes: float, total: int, before: str, after: str) -> None:
        verdict = "PASS" if not self.notes else f"FAIL ({len(self.notes)} problem(s))"
        restarts = (self.runs / "scheduler.log").read_text().count("holds ") if (self.runs / "scheduler.log").exists() else 0
        lines = [
            f"# chaos soak — {verdict}", "",
            f"- when: {datetime.fromtimestamp(began, timezone.utc):%Y-%m-%d %H:%M} UTC; machine {platform.machine()}, "
            f"{os.cpu_count()} CPUs, shared with other work; the soak ran under `nice -n 10`",
            f"- load before: `{before}`", f"- load after: `{after}`",
            f"- faults: {total} in {fault_minutes:.1f} min of faults (one every {self.args.fault_every:.0f} s on "
            f"average, at most {self.args.max_faults}), then {self.args.drain_minutes:.0f} min at most to drain",
            *(f"  - {k}: {n}" for k, n in sorted(self.faults.items())),
            f"- runs: {self.runs_checked} (vit_tiny, 32 px, {self.args.epochs} epochs, {len(self.reference)} metrics "
            f"records each; {self.args.slots} CPU slots; num_workers={self.args.workers}); scheduler processes that "
            f"held the runs folder: {restarts}",
            f"- equal to the unbroken run's metrics.jsonl (timings aside): {self.equal_runs} of {self.runs_checked}",
            f"- two trainers of one run alive at once: max {max(self.max_alive.values(), default=0)} per run "
            f"over {self.samples} samples (0.2 s apart)",
            "", "## problems", "", *(f"- {n}" for n in self.notes or ["none"]), "",
        ]
        text = "\n".join(lines)
        print(text, flush=True)
        if self.args.out:
            Path(self.args.out).write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of faults")
    ap.add_argument("--fault-every", type=float, default=12.0, help="mean seconds between faults")
    ap.add_argument("--max-faults", type=int, default=400)
    ap.add_argument("--revive-prob", type=float, default=0.3,
                    help="chance that a command reading the queue follows a fault (as a user's would)")
    ap.add_argument("--drain-minutes", type=float, default=10.0)
    ap.add_argument("--runs-at-once", type=int, default=4, help="unfinished runs kept in the queue")
    ap.add_argument("--max-runs", type=int, default=200)
    ap.add_argument("--slots", type=int, default=2, help="CPU slots of the scheduler")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="folder for the soak's data and runs (default: a new temp folder)")
    ap.add_argument("--out", help="write the result (markdown) here")
    args = ap.parse_args()
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
