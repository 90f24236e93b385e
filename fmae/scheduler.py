"""The detached dispatcher: one per runs folder, it starts queued runs through an executor (this
machine's GPU/CPU slots, or Slurm: `fmae.executors`) and notices when they end. Local runs are launched
in their own process sessions with output to train.log, so killing the scheduler, closing the app or
losing SSH leaves them running; a restarted scheduler adopts the live ones and marks the vanished ones
failed. The run folders stay the truth. When a run ends done or failed (or on a non-finite loss), the
command `[scheduler] notify` names in fmae.toml is run with the event (`fmae.notify`).

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
from fmae.executors import Claimed, Executor, Handle, Refused, make_executor, owner, says_ended
from fmae.notify import Notifier
from fmae.queue import Job, Queue, read_status_fast
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
    counts = Queue(project.runs_dir).counts()  # a COUNT, not 10,000 rows read to be counted
    unfinished = counts["queued"] + counts["running"]  # running includes launching
    if not unfinished:
        return None if quiet else "nothing queued: scheduler not started"
    if quiet and os.environ.get(NO_AUTOSTART_ENV):  # scripts (and tests) that only look at the queue
        return f"{unfinished} unfinished job(s) and no scheduler ({NO_AUTOSTART_ENV} is set: not started)"
    try:
        pid = start_detached(project)
    except (FmaeError, OSError) as e:
        return f"{unfinished} unfinished job(s) but no scheduler, and starting one failed: {e}"
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
class Scheduler:
    project: ProjectConfig
    poll: float = 0.25
    idle_exit: float = 60.0  # seconds with nothing queued or running before the scheduler exits
    grace: float = 30.0  # seconds from a cancel's soft stop (SIGTERM, scancel) to the hard one
    handles: dict[int, Handle] = field(default_factory=dict)  # job id -> its work, whichever executor has it
    stopping: bool = False

    def __post_init__(self) -> None:
        self.runs = self.project.runs_dir
        self.queue = Queue(self.runs)
        self.me = f"{os.getpid()}@{socket.gethostname()}"  # names this scheduler in a launching row
        self.executors: dict[str, Executor] = {}
        self.notifier = Notifier(self.project)

    def executor(self, kind: str) -> Executor:
        if kind not in self.executors:
            self.executors[kind] = make_executor(kind, self.project, self.queue, self.grace)
        return self.executors[kind]

    def executor_of(self, job: Job) -> Executor:
        """The executor that follows a claimed job (`fmae.executors.owner`)."""
        return owner(job, self.executor)

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
            self.notifier.reap()
            log.info("scheduler exits; %d run(s) keep going on their own", len(self.handles))
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    # --- reconciliation ---------------------------------------------------------------------------
    def reconcile(self) -> None:
        """After a (re)start: adopt live work, fail vanished runs; nothing is launched twice. The executor
        finds a run's live work (a local trainer holds its run folder's lock, or was just spawned and has
        not taken it yet; a Slurm job is named in status.json); a run folder that says it ended is
        believed next."""
        for job in self.queue.jobs(states=("running", "launching")):
            found = self.executor_of(job).find(job)
            if found is not None:
                self.handles[job.id] = found
                log.info("adopted job %d (%s), %s", job.id, job.run_id, found.where)
            elif says_ended(job.path):  # it ended (maybe before we came): the folder says how
                self._ended(job, None)
            elif job.state == "launching":  # its scheduler died before any trainer took the run
                self.queue.unlaunch(job.id)
                log.info("job %d (%s) was being launched by scheduler %s, which is gone: queued again",
                         job.id, job.run_id, job.launcher)
            else:
                self._ended(job, None)

    # --- one pass -----------------------------------------------------------------------------------
    def tick(self) -> bool:
        for job_id, h in list(self.handles.items()):
            ex = self.executor(h.executor)
            ended = ex.poll(h)
            if ended is not None:
                del self.handles[job_id]
                self._ended(h.job, ended.code)
                continue
            fresh = self.queue.get(job_id)
            if fresh and fresh.cancel_requested and not h.termed:
                h.termed = True
                # idempotent for the trainer: `queue cancel` may have sent one
                log.info("job %d (%s) cancel: %s", job_id, h.job.run_id, ex.cancel(h, hard=False))
            if fresh and fresh.cancel_requested and not h.killed:
                if time.time() - fresh.cancel_requested > self.grace:
                    log.warning("job %d did not stop %.0f s after the cancel: stopping it hard (SIGKILL)",
                                job_id, self.grace)
                    ex.cancel(h, hard=True)
                    h.killed = True
        self.notifier.reap()
        pending = self.queue.pending()
        self._launch(pending)
        return bool(self.handles) or bool(pending)

    def _launch(self, pending: list[Job]) -> None:
        """Place and claim what can start now, then hand the claimed jobs to the executor at once (a
        cluster submits them as one job array)."""
        ex = self.executor(self.project.executor)
        in_use = {s for h in self.handles.values() for s in h.slots}
        claimed: list[Claimed] = []
        for job in pending:
            try:
                placement = ex.place(job, in_use)
            except FmaeError as e:  # e.g. fmae.toml names a GPU that is gone: say so, keep the runs
                log.error("cannot place job %d: %s", job.id, e)
                break
            if placement is None:
                continue
            run = self._launchable(job)  # only now: a long queue waiting for slots costs no folder reads
            if run is None:
                continue
            # Claimed BEFORE the start: killed between the two, this scheduler leaves a launching row that
            # the next one resolves through the run folder, never a queued row that it would start again.
            if not self.queue.claim_launch(job.id, "+".join(placement.slots), self.me):
                continue  # cancelled or taken meanwhile
            in_use |= set(placement.slots)
            claimed.append(Claimed(job, run, placement))
        if not claimed:
            return
        for started in ex.launch(claimed):
            if isinstance(started, Refused):
                self._record(started.job, "failed", started.why)
                log.error("job %d (%s): %s", started.job.id, started.job.run_id, started.why)
                continue
            started.job = self.queue.launched(started.job.id, started.pid, started.pgid)
            self.handles[started.job.id] = started
            log.info("%s job %d (%s) on %s, %s", ex.started_word, started.job.id, started.job.run_id,
                     "+".join(started.slots), started.where)

    def _launchable(self, job: Job) -> RunDir | None:
        """The job's run folder, when it is there and not already done (else the row is settled)."""
        try:
            run = RunDir.open(job.path)
        except FmaeError as e:  # deleted (or emptied) while queued: this job fails, the loop goes on
            why = f"run folder {job.path} is gone" if not job.path.exists() else str(e)
            self._record(job, "failed", why)
            log.error("job %d (%s) not launched: %s", job.id, job.run_id, why)
            return None
        if (read_status_fast(job.path) or {}).get("state") == "done":  # a stale row (it ended unseen): never re-run
            self.queue.finish(job.id, "done")
            log.info("job %d (%s) is already done: not launched", job.id, job.run_id)
            return None
        return run

    def _record(self, job: Job, state: str, error: str | None) -> None:
        """The row's end, and the notification command (when fmae.toml names one)."""
        self.queue.finish(job.id, state, error=error)
        self.notifier.ended(job, state, error)

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
            self._record(job, "failed", str(e))
            return
        state = status.get("state")
        if state in FINAL_STATES:
            self._record(job, state, status.get("error"))
            log.info("job %d (%s) ended: %s", job.id, job.run_id, state)
            return
        if fresh is not None and fresh.cancel_requested:  # signalled before the trainer could record it
            run.mark_ended("cancelled", exit_code=code, error="cancelled")
            self._record(job, "cancelled", "cancelled")
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
        self._record(job, "failed", why)
        log.warning("job %d (%s) failed: %s", job.id, job.run_id, why)


def run_foreground(project: ProjectConfig, idle_exit: float | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)
    s = Scheduler(project)
    if idle_exit is not None:
        s.idle_exit = idle_exit
    s.run()
