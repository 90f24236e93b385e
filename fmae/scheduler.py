"""The detached dispatcher: one per runs folder, it starts queued runs on free GPU/CPU slots and
notices when they end. Runs are launched in their own process sessions with output to train.log, so
killing the scheduler, closing the app or losing SSH leaves them running; a restarted scheduler adopts
the live ones and marks the vanished ones failed. The run folders stay the truth.

No torch here: the app and the CLI start and query the scheduler.
"""

from __future__ import annotations

import contextlib
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
from fmae.run_lock import exec_lock_holder, trainer_alive
from fmae.runs import FINAL_STATES, RunDir, pid_alive

LOCK_NAME = ".scheduler.lock"
INFO_NAME = "scheduler.json"
LOG_NAME = "scheduler.log"
NO_AUTOSTART_ENV = "FMAE_NO_AUTOSTART"  # set: readers of the queue never start a scheduler

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
                info = json.loads((runs_dir / INFO_NAME).read_text())
            except (OSError, ValueError):
                return {"pid": None, "host": "?", "started": "?"}
            # The new holder writes scheduler.json just after taking the lock: until then the file still
            # names the previous (dead) one. A pid of this host that is not alive is not the holder.
            pid = info.get("pid") if isinstance(info, dict) else None
            if not isinstance(info, dict) or (info.get("host") == socket.gethostname()
                                              and not (isinstance(pid, int) and pid_alive(pid))):
                return {"pid": None, "host": "?", "started": "starting"}
            return info
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


def ensure_running(project: ProjectConfig, quiet: bool = False) -> str | None:
    """Start the scheduler when the queue holds unfinished work (queued, launching or running) and no
    scheduler holds the runs folder — after a crash, whoever reads the queue next brings it back.
    Returns what it did in words; with `quiet` (for readers of the queue: `queue ls`, the Queue screen)
    None when there was nothing to do. A start that fails is said, not raised."""
    info = holder(project.runs_dir)
    if info is not None:
        return None if quiet else f"scheduler running ({describe(info)})"
    if not (project.runs_dir / "queue.sqlite").exists():
        return None if quiet else "nothing queued: scheduler not started"
    unfinished = Queue(project.runs_dir).jobs(states=("queued", "launching", "running"))
    if not unfinished:
        return None if quiet else "nothing queued: scheduler not started"
    if quiet and os.environ.get(NO_AUTOSTART_ENV):  # scripts (and tests) that only look at the queue
        return f"{len(unfinished)} unfinished job(s) and no scheduler ({NO_AUTOSTART_ENV} is set: not started)"
    try:
        pid = start_detached(project)
    except (FmaeError, OSError) as e:
        return f"{len(unfinished)} unfinished job(s) but no scheduler, and starting one failed: {e}"
    again = "no scheduler was running: " if quiet else ""
    return f"{again}scheduler started (pid {pid}; log {project.runs_dir / LOG_NAME})"


def systemd_unit(project: ProjectConfig) -> str:
    """A systemd user unit that keeps this runs folder's scheduler running (restarted after a crash or a
    kill), for `~/.config/systemd/user/`. It never exits when idle: systemd supervises it."""
    runs = project.runs_dir
    cmd = [sys.executable, "-m", "fmae", "scheduler", "run", "--runs-dir", str(runs), "--idle-exit", "inf"]
    if project.path is not None:
        cmd += ["--config", str(project.path)]
    exec_start = " ".join(_systemd_quote(a) for a in cmd)
    return (f"# fmae scheduler for {runs}\n"
            "# Install: fmae scheduler unit > ~/.config/systemd/user/fmae-scheduler.service\n"
            "#          systemctl --user daemon-reload && systemctl --user enable --now fmae-scheduler\n"
            "# Keep it running after logout: loginctl enable-linger $USER\n"
            "[Unit]\n"
            f"Description=fmae scheduler for {runs}\n"
            "\n"
            "[Service]\n"
            "Type=simple\n"
            f"WorkingDirectory={_systemd_quote(str(runs))}\n"
            f"ExecStart={exec_start}\n"
            "Restart=always\n"
            "RestartSec=5\n"
            "# SIGTERM stops the scheduler only; its runs go on in their own sessions.\n"
            "KillMode=process\n\n"
            "[Install]\n"
            "WantedBy=default.target\n")


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-+=:@," for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


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
    termed: bool = False  # the scheduler sent the cancel's SIGTERM itself (the cancel came before a pid)
    ended_at: float | None = None  # when status.json first said a final state while the process lived


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
        self.me = f"{os.getpid()}@{socket.gethostname()}"  # names this scheduler in a launching row

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
        """After a (re)start: adopt live runs, fail vanished ones; nothing is launched twice. A trainer is
        alive when it holds its run folder's lock (or, just spawned, has not taken it yet); a run folder
        that says it ended is believed first."""
        for job in self.queue.jobs(states=("running", "launching")):
            if (job.slot or "").startswith("slurm"):
                self.slurm[job.id] = job
                log.info("following slurm job %d (%s)", job.id, job.run_id)
                continue
            live = exec_lock_holder(job.path)
            if live is None and _final(job):  # it ended (maybe before we came): the folder says how
                self._ended(job, None)
                continue
            if live is None and trainer_alive(job.path, job.pid):
                live = job.pid
            if live is not None:
                self._adopt(job, live or job.pid or 0)
            elif job.state == "launching":  # its scheduler died before any trainer took the run
                self.queue.unlaunch(job.id)
                log.info("job %d (%s) was being launched by scheduler %s, which is gone: queued again",
                         job.id, job.run_id, job.launcher)
            else:
                self._ended(job, None)

    def _adopt(self, job: Job, pid: int) -> None:
        """Follow a live trainer this scheduler did not start (or whose start another process won)."""
        if pid:
            with_pgid = _pgid(pid) or pid
            job = self.queue.launched(job.id, pid, with_pgid)
            try:  # status.json names the live trainer, not a loser that exited
                RunDir(job.path).update_status(pid=pid, pgid=with_pgid)
            except (FmaeError, OSError):
                pass
        self.running[job.id] = Running(job, self._slots_of(job), None, pid or (job.pid or 0))
        log.info("adopted job %d (%s), pid %s", job.id, job.run_id, pid or "?")

    def _slots_of(self, job: Job) -> tuple:
        return tuple((job.slot or "").split("+")) if job.slot else ()

    # --- one pass -----------------------------------------------------------------------------------
    def tick(self) -> bool:
        for job_id, r in list(self.running.items()):
            if r.proc is not None:
                code = r.proc.poll()
                if code is not None and (other := exec_lock_holder(r.job.path)) is not None:
                    # Our trainer exited (EXIT_ALREADY_RUNNING) because a live one holds the run folder's
                    # lock, started by a scheduler that died before recording it: follow that one.
                    del self.running[job_id]
                    self._adopt(r.job, other)
                    continue
            else:  # adopted: the folder's final state first, then its lock
                code = -1 if _final(r.job) or not trainer_alive(r.job.path, r.pid) else None
            if code is not None:
                del self.running[job_id]
                self._ended(r.job, code if r.proc is not None else None)
                continue
            fresh = self.queue.get(job_id)
            if r.proc is not None and _final(r.job):  # it said it ended: it must exit soon
                r.ended_at = r.ended_at or time.time()
                if time.time() - r.ended_at > self.grace and not r.killed:
                    log.warning("job %d ended %.0f s ago but its process %d still runs: SIGKILL", job_id,
                                self.grace, r.pid)
                    _killpg(r.pid, signal.SIGKILL)
                    r.killed = True
            if fresh and fresh.cancel_requested and not r.termed:
                r.termed = True
                _killpg(r.pid, signal.SIGTERM)  # idempotent for the trainer: `queue cancel` may have sent one
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
        try:
            run = RunDir.open(job.path)
        except FmaeError as e:  # deleted (or emptied) while queued: this job fails, the loop goes on
            why = f"run folder {job.path} is gone" if not job.path.exists() else str(e)
            self.queue.finish(job.id, "failed", error=why)
            log.error("job %d (%s) not launched: %s", job.id, job.run_id, why)
            return
        if (_status(job) or {}).get("state") == "done":  # a stale row (its trainer ended unseen): never re-run
            self.queue.finish(job.id, "done")
            log.info("job %d (%s) is already done: not launched", job.id, job.run_id)
            return
        if self.project.executor == "slurm":
            self._submit(job, run)
            return
        cuda = gpu_env.get("CUDA_VISIBLE_DEVICES", "")
        cmd = [sys.executable, "-m", "fmae", "exec", str(job.path)]
        if job.nproc > 1:
            cmd += ["--nproc", str(job.nproc)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **gpu_env}
        # Claimed BEFORE the spawn: killed between the two, this scheduler leaves a launching row that the
        # next one resolves through the run folder's lock, never a queued row that it would launch again.
        if not self.queue.claim_launch(job.id, "+".join(slots), self.me):
            return  # cancelled or taken meanwhile
        try:
            with open(run.log_path, "ab") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                        start_new_session=True, close_fds=True, cwd=str(job.path))
        except OSError as e:
            with contextlib.suppress(FmaeError, OSError):  # the folder itself may be what went missing
                run.mark_ended("failed", error=f"could not start the trainer: {e}")
            self.queue.finish(job.id, "failed", error=f"could not start the trainer: {e}")
            log.error("job %d (%s): could not start the trainer: %s", job.id, job.run_id, e)
            return
        job = self.queue.launched(job.id, proc.pid, proc.pid)
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
    if pgid <= 1 or pgid == os.getpgrp():  # never our own group (or everyone's)
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _status(job: Job) -> dict | None:
    from fmae.queue import read_status_fast

    return read_status_fast(job.path)  # None when missing or damaged: never raises


def _final(job: Job) -> bool:
    """Whether the run folder says the run ended (done, failed, cancelled): believed before any pid."""
    status = _status(job)
    return status is not None and status["state"] in FINAL_STATES


def run_foreground(project: ProjectConfig, idle_exit: float | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)
    s = Scheduler(project)
    if idle_exit is not None:
        s.idle_exit = idle_exit
    s.run()
