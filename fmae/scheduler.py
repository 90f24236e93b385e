"""The detached dispatcher: one per runs folder, it starts queued runs on free GPU/CPU slots and
notices when they end. Runs are launched in their own process sessions with output to train.log, so
killing the scheduler, closing the app or losing SSH leaves them running; a restarted scheduler adopts
the live ones and marks the vanished ones failed. The run folders stay the truth.

No torch here: the app and the CLI start and query the scheduler.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fmae.atomic_write import write_text_atomic
from fmae.config import ProjectConfig
from fmae.errors import FmaeError
from fmae.queue import Job, Queue
from fmae.runs import FINAL_STATES, RunDir, pid_alive

LOCK_NAME = ".scheduler.lock"
INFO_NAME = "scheduler.json"
LOG_NAME = "scheduler.log"

log = logging.getLogger("fmae.scheduler")


# --- who holds the runs folder ------------------------------------------------------------------

def holder(runs_dir: Path) -> dict | None:
    """The running scheduler's facts (pid, host, started), or None when no scheduler holds the lock."""
    lock = runs_dir / LOCK_NAME
    if not lock.exists():
        return None
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads((runs_dir / INFO_NAME).read_text())
            except (OSError, ValueError):
                return {"pid": None, "host": "?", "started": "?"}
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def describe(info: dict) -> str:
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"


def start_detached(project: ProjectConfig, wait: float = 10.0) -> int:
    """Start `fmae scheduler run` in its own session (it survives this terminal); return its pid."""
    runs = project.runs_dir
    runs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fmae", "scheduler", "run", "--runs-dir", str(runs)]
    if project.path is not None:
        cmd += ["--config", str(project.path)]
    with open(runs / LOG_NAME, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True, cwd=str(runs))
    deadline = time.time() + wait
    while time.time() < deadline:  # until it holds the lock (or lost the race to another one)
        info = holder(runs)
        if info is not None and info.get("pid"):
            return int(info["pid"])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    info = holder(runs)
    if info is not None and info.get("pid"):
        return int(info["pid"])
    raise FmaeError(f"the scheduler did not start — see {runs / LOG_NAME}")


def ensure_running(project: ProjectConfig) -> str:
    """Start the scheduler when there is queued or running work and none holds the runs folder."""
    info = holder(project.runs_dir)
    if info is not None:
        return f"scheduler running ({describe(info)})"
    q = Queue(project.runs_dir)
    if not q.jobs(states=("queued", "running")):
        return "nothing queued: scheduler not started"
    pid = start_detached(project)
    return f"scheduler started (pid {pid}; log {project.runs_dir / LOG_NAME})"


def stop(runs_dir: Path, wait: float = 15.0) -> str:
    info = holder(runs_dir)
    if info is None:
        return "no scheduler running"
    pid = info.get("pid")
    if not pid:
        raise FmaeError(f"{runs_dir / LOCK_NAME} is locked but {INFO_NAME} does not say by whom")
    if info.get("host") != socket.gethostname():
        raise FmaeError(f"the scheduler runs on {info.get('host')}, not here — stop it there")
    os.kill(int(pid), signal.SIGTERM)
    deadline = time.time() + wait
    while time.time() < deadline and holder(runs_dir) is not None:
        time.sleep(0.05)
    if holder(runs_dir) is not None:
        raise FmaeError(f"the scheduler (pid {pid}) did not stop within {wait:.0f} s")
    return f"scheduler stopped (pid {pid}); runs go on"


# --- the loop -------------------------------------------------------------------------------------

@dataclass
class Running:
    job: Job
    slots: tuple
    proc: subprocess.Popen | None  # None for a run adopted from an earlier scheduler
    pid: int
    killed: bool = False


@dataclass
class Scheduler:
    project: ProjectConfig
    poll: float = 0.25
    idle_exit: float = 60.0  # seconds with nothing queued or running before the scheduler exits
    grace: float = 30.0  # seconds from a cancel's SIGTERM to SIGKILL
    running: dict[int, Running] = field(default_factory=dict)
    slurm: dict[int, Job] = field(default_factory=dict)  # jobs handed to slurm, polled through submitit
    slurm_cancelled: set[int] = field(default_factory=set)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.runs = self.project.runs_dir
        self.queue = Queue(self.runs)

    def run(self) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        lock = open(self.runs / LOCK_NAME, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = holder(self.runs) or {}
            raise FmaeError(f"a scheduler already runs for {self.runs} ({describe(info)})") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_text_atomic(self.runs / INFO_NAME, json.dumps(info) + "\n")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("scheduler %s holds %s", describe(info), self.runs)
        try:
            self.reconcile()
            idle_since = time.monotonic()
            while not self.stopping:
                busy = self.tick()
                if busy:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.idle_exit:
                    log.info("idle for %.0f s: exiting", self.idle_exit)
                    break
                time.sleep(self.poll)
        finally:
            log.info("scheduler exits; %d run(s) keep going on their own", len(self.running))
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    # --- reconciliation ---------------------------------------------------------------------------
    def reconcile(self) -> None:
        """After a (re)start: adopt live runs, fail vanished ones; nothing is launched twice."""
        for job in self.queue.jobs(states=("running",)):
            if (job.slot or "").startswith("slurm"):
                self.slurm[job.id] = job
                log.info("following slurm job %d (%s)", job.id, job.run_id)
            elif job.pid and pid_alive(job.pid):
                self.running[job.id] = Running(job, self._slots_of(job), None, job.pid)
                log.info("adopted job %d (%s), pid %d", job.id, job.run_id, job.pid)
            else:
                self._ended(job, None)

    def _slots_of(self, job: Job) -> tuple:
        return tuple((job.slot or "").split("+")) if job.slot else ()

    # --- one pass -----------------------------------------------------------------------------------
    def tick(self) -> bool:
        for job_id, r in list(self.running.items()):
            code = r.proc.poll() if r.proc is not None else (None if pid_alive(r.pid) else -1)
            if code is not None:
                del self.running[job_id]
                self._ended(r.job, code if r.proc is not None else None)
                continue
            fresh = self.queue.get(job_id)
            if fresh and fresh.cancel_requested and not r.killed:
                if time.time() - fresh.cancel_requested > self.grace:
                    log.warning("job %d ignored SIGTERM for %.0f s: SIGKILL", job_id, self.grace)
                    _killpg(r.pid, signal.SIGKILL)
                    r.killed = True
        if self.slurm:
            self._poll_slurm()
        pending = self.queue.pending()
        for job in pending:
            try:
                placed = self._place(job)
            except FmaeError as e:  # e.g. fmae.toml names a GPU that is gone: say so, keep the runs
                log.error("cannot place job %d: %s", job.id, e)
                break
            if placed is not None:
                self._launch(job, *placed)
        return bool(self.running) or bool(self.slurm) or bool(pending)

    def _place(self, job: Job) -> tuple[tuple[str, ...], dict[str, str]] | None:
        """Free slots for this job now (names, the GPU environment), or None."""
        from fmae import gpus as G

        if self.project.executor == "slurm":  # the cluster places it; we only hand it over
            return (f"slurm{job.id}",), {}
        in_use = {s for r in self.running.values() for s in r.slots}
        found = G.discover()
        slots = [s for s in G.plan_slots(self.project, found) if s.name not in in_use]
        picked = G.assign(slots, job.gpus, found, self.project.min_free_memory_gib)
        if picked is None:
            return None
        return tuple(s.name for s in picked), G.cuda_env(picked)

    def _launch(self, job: Job, slots: tuple[str, ...], gpu_env: dict[str, str]) -> None:
        run = RunDir.open(job.path)
        if self.project.executor == "slurm":
            self._submit(job, run)
            return
        cuda = gpu_env.get("CUDA_VISIBLE_DEVICES", "")
        cmd = [sys.executable, "-m", "fmae", "exec", str(job.path)]
        if job.nproc > 1:
            cmd += ["--nproc", str(job.nproc)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **gpu_env}
        with open(run.log_path, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True, close_fds=True, cwd=str(job.path))
        if not self.queue.claim(job.id, "+".join(slots), proc.pid, proc.pid):
            _killpg(proc.pid, signal.SIGKILL)  # someone else took it meanwhile: never run twice
            proc.wait()
            return
        run.mark_running(pid=proc.pid, pgid=proc.pid, host=socket.gethostname(), gpus=cuda)
        self.running[job.id] = Running(job, slots, proc, proc.pid)
        log.info("launched job %d (%s) on %s, pid %d", job.id, job.run_id, "+".join(slots), proc.pid)

    def _submit(self, job: Job, run: RunDir) -> None:
        """executor = "slurm": submitit submits the run; the cluster's state comes back via sacct."""
        from fmae.executors.slurm import submit_run

        if not self.queue.claim(job.id, f"slurm{job.id}", 0, 0):
            return
        try:
            job_id = submit_run(job.path, self.project, gpus=job.gpus,
                                local=self.project.slurm.get("cluster", "slurm") == "local")
        except FmaeError as e:
            self.queue.finish(job.id, "failed", error=str(e))
            log.error("job %d (%s): %s", job.id, job.run_id, e)
            return
        self.slurm[job.id] = job
        log.info("submitted job %d (%s) to slurm as %s", job.id, job.run_id, job_id)

    def _poll_slurm(self) -> None:
        from fmae.executors.slurm import cancel_slurm, reconcile_slurm

        for job_id, job in list(self.slurm.items()):
            fresh = self.queue.get(job_id)
            if fresh is not None and fresh.cancel_requested and job_id not in self.slurm_cancelled:
                cancel_slurm(job.path)
                self.slurm_cancelled.add(job_id)
            reconcile_slurm(job.path)
            status = RunDir.open(job.path).read_status()
            if status.get("state") in FINAL_STATES:
                del self.slurm[job_id]
                self.queue.finish(job_id, status["state"], error=status.get("error"))
                log.info("job %d (%s) ended on slurm: %s", job_id, job.run_id, status["state"])

    def _ended(self, job: Job, code: int | None) -> None:
        """Record how a run ended: its status.json when the trainer wrote one, else 'process vanished'."""
        fresh = self.queue.get(job.id)
        if fresh is not None and fresh.state == "queued":  # retried while its old process was exiting
            log.info("job %d (%s) was queued again", job.id, job.run_id)
            return
        try:
            run = RunDir.open(job.path)
            status = run.read_status()
        except FmaeError as e:
            self.queue.finish(job.id, "failed", error=str(e))
            return
        state = status.get("state")
        if state in FINAL_STATES:
            self.queue.finish(job.id, state, error=status.get("error"))
            log.info("job %d (%s) ended: %s", job.id, job.run_id, state)
            return
        if fresh is not None and fresh.cancel_requested:  # signalled before the trainer could record it
            run.mark_ended("cancelled", exit_code=code, error="cancelled")
            self.queue.finish(job.id, "cancelled", error="cancelled")
            log.info("job %d (%s) cancelled", job.id, job.run_id)
            return
        if code is None:
            why = "process vanished"
        elif code < 0:
            why = f"process vanished (killed by signal {-code})"
            if -code == signal.SIGKILL:  # nobody here sends a bare SIGKILL except a cancel that overran
                why += " — if nobody killed it, the kernel's out-of-memory killer may have: see `dmesg`"
        else:
            why = f"process vanished (exit code {code})"
        run.mark_ended("failed", exit_code=code, error=why)
        self.queue.finish(job.id, "failed", error=why)
        log.warning("job %d (%s) failed: %s", job.id, job.run_id, why)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run_foreground(project: ProjectConfig, idle_exit: float | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)
    s = Scheduler(project)
    if idle_exit is not None:
        s.idle_exit = idle_exit
    s.run()
