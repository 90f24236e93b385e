"""What a user does to the queue — plan and add a matrix (fmae/study.py), list, cancel, retry, reprioritise —
as functions that return what happened in words. `fmae queue …` prints those words; the app shows them. One code path
for both, so a matrix queued from the Launch screen is exactly the one `fmae queue add` would queue.

No torch here: the app imports this module.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from fmae.elapsed import age, duration
from fmae.errors import FmaeError
from fmae.executors.slurm import SLOT_PREFIX
from fmae.queue import Job, Queue, read_status_fast
from fmae.runs import FINAL_STATES, STATES, RunDir, parse_utc, pid_alive
# Planning and adding a matrix are the study layer's; the CLI and the app read them here beside the rest.
from fmae.study import MatrixPlan, add_matrix, cell_label, default_gpus_per_run, num, plan_matrix  # noqa: F401

if TYPE_CHECKING:
    from fmae.config import ProjectConfig

RECENT_FINISHED = 20  # finished jobs a plain listing keeps
STARTING = "starting"  # a row's state between queued and running (see queue_rows)
SUBMITTED = "submitted"  # the same for a job handed to Slurm: it may wait there for hours, not seconds
ROW_STATES = (STATES[0], STARTING, SUBMITTED, *STATES[1:], "corrupt")  # a row's states, in the counts' order


# --- parsing the matrix's lists ----------------------------------------------------------------------

def parse_ints(text: Optional[str], flag: str) -> Optional[list[int]]:
    """"1,2,3" → [1, 2, 3]; None stays None (not given). `flag` names the field in the error."""
    return _parse_list(text, flag, int, "whole numbers separated by commas, e.g. 1,2,3")


def parse_floats(text: Optional[str], flag: str) -> Optional[list[float]]:
    return _parse_list(text, flag, float, "numbers separated by commas, e.g. 0,2")


def _parse_list(text: Optional[str], flag: str, kind: Any, expected: str) -> Optional[list]:
    if text is None:
        return None
    try:
        values = [kind(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise FmaeError(f"{flag} {text}: expected {expected}") from None
    if not values:
        raise FmaeError(f"{flag} {text!r}: give at least one value")
    return values


def start_scheduler(project: "ProjectConfig") -> str:
    """Start the scheduler when work waits and none holds the runs folder; says what it did."""
    from fmae.scheduler import ensure_running

    return ensure_running(project)


# --- listing -----------------------------------------------------------------------------------------

def progress_text(status: Optional[dict]) -> str:
    if not status:
        return "-"
    parts = []
    if status.get("epoch") is not None:
        parts.append(f"e {status['epoch']}/{status.get('epochs', '?')}")
    if status.get("step") is not None:
        parts.append(f"s {status['step']}/{status.get('total_steps', '?')}")
    return " · ".join(parts) or "-"


def timing(status: Optional[dict], now: float) -> tuple[Optional[float], Optional[float]]:
    """(elapsed seconds, seconds left) of a run from its status.json. Elapsed runs from the start to the
    end (or now); what is left comes from the step rate measured since the start (steps done over the
    time to the last progress write), None until a step is done."""
    if not status:
        return None, None
    started = parse_utc(status.get("started"))
    if started is None:
        return None, None
    ended = parse_utc(status.get("ended"))
    running = status.get("state") == "running"
    elapsed = max(0.0, (ended if ended is not None else now if running else started) - started)
    step, total = status.get("step"), status.get("total_steps")
    beat = parse_utc(status.get("heartbeat"))
    if not running or not isinstance(step, int) or not isinstance(total, int) or step <= 0 or beat is None:
        return elapsed, None
    measured = beat - started  # includes start-up, so an early estimate errs long (a resumed run: short)
    if measured <= 0:
        return elapsed, None
    return elapsed, max(0.0, (total - step) * measured / step - (now - beat))


class StatusCache:
    """status.json of each job's run folder, read again only when its stamp (inode, mtime, size) moved;
    a job that finished is not even stat'ed again while its queue row still says it finished (a retry
    or a requeue changes the row first). For a screen that lists 10,000 jobs every second or two."""

    RACY_NS = 2_000_000_000  # a file written this recently may change again within its mtime's tick

    def __init__(self) -> None:
        # path -> (stamp or None: not to be trusted, the queue row's state when read, status)
        self._held: dict[str, tuple[tuple[int, int, int] | None, str, dict[str, Any] | None]] = {}
        self.reads = 0  # status.json files read so far, for tests and for the curious

    def status(self, path: str, queue_state: str) -> dict[str, Any] | None:
        held = self._held.get(path)
        if held is not None and held[1] == queue_state and held[0] is not None and held[2] is not None \
                and held[2]["state"] in FINAL_STATES and queue_state in FINAL_STATES:
            return held[2]
        try:
            st = os.stat(os.path.join(path, "status.json"))
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if held is not None and stamp is not None and held[0] == stamp:
            if held[1] != queue_state:
                self._held[path] = (stamp, queue_state, held[2])
            return held[2]
        self.reads += 1
        status = read_status_fast(path)
        if stamp is not None and time.time_ns() - stamp[1] < self.RACY_NS:
            stamp = None
        self._held[path] = (stamp, queue_state, status)
        return status

    def keep_only(self, paths: set[str]) -> None:
        """Forget the folders of jobs no longer in the queue."""
        for path in [p for p in self._held if p not in paths]:
            del self._held[path]


def queue_rows(q: Queue, *, all_: bool = False, states: Optional[set[str]] = None,
               recent: int = RECENT_FINISHED, cache: StatusCache | None = None) -> tuple[list[dict[str, Any]], int]:
    """The jobs as rows, each a job's fields plus its status.json facts, and how many finished jobs were
    hidden (all but the `recent` latest, unless `all_` or `states`). `state` is status.json's (or
    "corrupt"), or "starting" while status.json still says queued but the scheduler has launched the job
    (only the trainer writes running, once torch has loaded: seconds) — "submitted" when it went to
    Slurm (its slot `slurm<id>`), where it may be pending in the cluster's queue; `queue_state` the table's cache;
    `elapsed_s` and `eta_s` from `timing` (a starting job's elapsed from its launch). With `cache`, a
    status.json is read only when it changed (see StatusCache)."""
    now = time.time()
    rows = []
    jobs = q.job_dicts()
    if cache is not None:
        cache.keep_only({row["path"] for row in jobs})
    for row in jobs:
        status = read_status_fast(row["path"]) if cache is None else cache.status(row["path"], row["state"])
        row["queue_state"] = row["state"]
        row["state"] = status["state"] if status else "corrupt"
        starting = row["state"] == "queued" and row["queue_state"] in ("launching", "running")
        if starting:  # handed to an executor, its trainer still loading torch: not waiting in line any more
            row["state"] = SUBMITTED if str(row.get("slot") or "").startswith(SLOT_PREFIX) else STARTING
        for key in ("epoch", "epochs", "step", "total_steps", "host"):
            row[key] = status.get(key) if status else None
        if status and status.get("error"):
            row["error"] = status["error"]
        row["progress"] = progress_text(status)
        row["age_s"] = now - row["added"]
        row["elapsed_s"], row["eta_s"] = timing(status, now)
        if starting and row["started"] is not None:  # the claim's time: elapsed counts from the launch
            row["elapsed_s"] = max(0.0, now - row["started"])
        rows.append(row)
    if states:
        rows = [r for r in rows if r["state"] in states]
    hidden = 0
    if not all_ and not states:
        finished = [r for r in rows if r["state"] in FINAL_STATES]
        keep = {r["id"] for r in sorted(finished, key=lambda r: (r["ended"] or r["added"], r["id"]))[-recent:]}
        hidden = len(finished) - len(keep)
        rows = [r for r in rows if r["state"] not in FINAL_STATES or r["id"] in keep]
    return rows, hidden


def work_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the Queue screen lists them: running first, then queued in the order they will start
    (priority, then age), then the rest, the latest to finish first."""
    def key(r: dict[str, Any]) -> tuple:
        state = row_state(r).split()[0]
        if state in ("running", "cancelling", STARTING, SUBMITTED):
            return (0, 0, r["id"])
        if r["state"] == "queued":
            return (1, -int(r["priority"] or 0), r["id"])
        return (2, -(r.get("ended") or r.get("added") or 0), -r["id"])
    return sorted(rows, key=key)


COLUMNS = (("id", ">"), ("state", "<"), ("dataset", "<"), ("fold", ">"), ("seed", ">"), ("λ", ">"),
           ("model", "<"), ("GPU", "<"), ("progress", "<"), ("elapsed", ">"), ("ETA", ">"), ("age", ">"))


def row_state(r: dict[str, Any]) -> str:
    state = r["state"] + (f" p{r['priority']}" if r["priority"] and r["state"] == "queued" else "")
    if r["state"] in ("running", STARTING, SUBMITTED) and r["cancel_requested"]:
        state = "cancelling"
    return state


def table_cells(r: dict[str, Any]) -> list[str]:
    """One row as the text of its columns (COLUMNS)."""
    au = r["task"] == "au"
    eta = duration(r.get("eta_s")) if r["state"] == "running" else "-"
    return [str(r["id"]), row_state(r), r["dataset"], str(r["fold"]) if au else "-", str(r["seed"]),
            num(r["lambda_id"]) if au else "-", r["model"], r["slot"] or "-", r["progress"],
            duration(r.get("elapsed_s")), eta, age(r["age_s"])]


def counts_line(rows: list[dict[str, Any]], hidden: int = 0) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in ROW_STATES}
    text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if hidden:
        text += f"; {hidden} older finished job(s) hidden"
    return text


# --- cancel / retry / priority -----------------------------------------------------------------------

def resolve_jobs(q: Queue, ids: Iterable[str]) -> list[Job]:
    """Jobs named by job id or run id, in the order given (duplicates dropped)."""
    jobs = {}
    for text in ids:
        text = str(text).strip().rstrip("/")
        job = q.get(int(text)) if text.isdigit() else q.get_run(Path(text).name)
        if job is None:
            raise FmaeError(f"job {text}: no such job in {q.db_path} (see `fmae queue ls --all`)")
        jobs[job.id] = job
    return list(jobs.values())


def active_jobs(q: Queue) -> list[Job]:
    """Queued and running jobs whose run folder has not ended (what `cancel --all` cancels)."""
    out = []
    for job in q.jobs(states=("queued", "launching", "running")):
        status = read_status_fast(job.path)
        if not (status and status["state"] in FINAL_STATES):
            out.append(job)
    return out


def check_cancellable(jobs: Iterable[Job]) -> None:
    for job in jobs:
        status = read_status_fast(job.path)
        # The row can say running for a moment after the run folder (the truth) says it ended.
        state = status["state"] if status and status["state"] in FINAL_STATES else job.state
        if state not in ("queued", "launching", "running"):
            raise FmaeError(f"job {job.id} ({job.run_id}) is {state}: only queued or running jobs can be cancelled")


def cancel_job(q: Queue, job: Job) -> str:
    """A queued job is cancelled at once; a started one is stopped by the executor that runs it
    (`fmae.executors.stop_job`: SIGTERM to a local trainer's process group, scancel for a Slurm job); it
    saves a checkpoint and ends `cancelled`, and the scheduler stops it hard after a grace period."""
    now = q.cancel(job.id)
    if now.state == "cancelled":
        try:
            RunDir(now.path).mark_ended("cancelled", error="cancelled before it started")
        except (FmaeError, OSError) as e:
            return f"job {now.id} cancelled in the queue, but its status.json could not be written: {e}"
        return f"job {now.id} cancelled (it had not started): {now.run_id}"
    ended = cancel_outcome(now)
    if ended is not None:  # the run ended between the look that offered the cancel and this one
        return ended
    from fmae.executors import stop_job

    return f"job {now.id} {stop_job(now, q)}: {now.run_id}"


def cancel_outcome(job: Job) -> Optional[str]:
    """How a cancel turned out, once the run folder says the run ended (None while it still runs). A
    cancel that reaches a run as its last step finishes finds it done: that is not a cancellation."""
    status = read_status_fast(job.path) or {}
    state = status.get("state")
    if state == "done":
        return f"job {job.id} finished before the cancel arrived (it ended done): {job.run_id}"
    if state == "cancelled":
        last = job.path / "checkpoints" / "last.pt"
        how = "its checkpoint is saved; retry resumes from it" if last.is_file() else "no checkpoint was saved"
        return f"job {job.id} cancelled ({how}): {job.run_id}"
    if state == "failed":
        return f"job {job.id} failed while stopping: {status.get('error') or 'no reason given'}"
    return None


def check_retryable(jobs: Iterable[Job]) -> None:
    for job in jobs:
        status = read_status_fast(job.path)
        truth = status["state"] if status else "corrupt"
        # The row may still say running for a moment after the run folder says it ended (the scheduler
        # has not noticed the exit yet): the folder is the truth, so that is retryable too.
        if job.state not in ("failed", "cancelled") and not (job.state == "running" and truth in ("failed", "cancelled")):
            raise FmaeError(f"job {job.id} ({job.run_id}) is {job.state}: only failed or cancelled jobs can be retried"
                            + (" — a done run is not re-run; queue a new one" if job.state == "done" else ""))
        if truth not in ("failed", "cancelled"):
            raise FmaeError(f"job {job.id} ({job.run_id}): its status.json says {truth}; only failed or cancelled "
                            "runs can be retried")


def retry_job(q: Queue, job: Job, runs_dir: Path) -> str:
    """Queue a failed or cancelled job again (check_retryable first); it resumes from its last checkpoint."""
    if job.state == "running":
        _settle(q, job, runs_dir)
    # status.json first: once the row says queued the scheduler may start it at any moment.
    RunDir(job.path).mark_queued()
    q.requeue(job.id)
    last = job.path / "checkpoints" / "last.pt"
    how = "resumes from checkpoints/last.pt" if last.is_file() else "starts from the beginning (no checkpoint)"
    return f"job {job.id} queued again, {how}: {job.run_id}"


def _settle(q: Queue, job: Job, runs_dir: Path, wait: float = 30.0) -> None:
    """Wait until the row of a run that has ended (by its status.json) is final too. A scheduler holding
    the runs folder records the end itself (it must, before the job is queued again, or it would take the
    requeued run for a vanished one); without one, the row is finished here once the process is gone."""
    from fmae.scheduler import holder

    deadline = time.monotonic() + wait
    while True:
        fresh = q.get(job.id)
        if fresh is None or fresh.state in FINAL_STATES:
            return
        if holder(runs_dir) is None:
            status = read_status_fast(job.path) or {}
            here = status.get("host") in (None, socket.gethostname())
            pid = fresh.pid or status.get("pid")
            if not (here and pid and pid_alive(int(pid))) and status.get("state") in FINAL_STATES:
                q.finish(job.id, status["state"], error=status.get("error"))
                return
        if time.monotonic() > deadline:
            raise FmaeError(f"job {job.id} ({job.run_id}): its run has ended but its process has not exited "
                            f"after {wait:.0f} s — retry again in a moment")
        time.sleep(0.1)


def set_priority(q: Queue, job: Job, priority: int) -> str:
    q.set_priority(job.id, priority)
    pending = [j.id for j in q.pending()]
    where = f"; {pending.index(job.id) + 1} of {len(pending)} in line" if job.id in pending else f" ({job.state})"
    return f"job {job.id}: priority {priority}{where}"
