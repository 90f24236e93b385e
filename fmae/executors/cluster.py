"""The scheduler's side of Slurm (`executor.kind = "slurm"`): the cluster places the runs, so placing is
naming; what the scheduler claimed in one pass is submitted as one job array per resource shape
(`fmae.executors.slurm.submit_runs`); `sacct` is asked about all the jobs at once, at most every
`SACCT_EVERY_S`; the run folders, which the trainers write on the compute nodes, say how each ended.

No torch here; submitit is imported when a job is first submitted or followed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from fmae.errors import FmaeError
from fmae.executors import Claimed, Ended, Handle, Placement, Refused, slots_of
from fmae.executors.slurm import (SACCT_EVERY_S, SLOT_PREFIX, TERMINAL_STATES, cancel_slurm, load_job,
                                  reconcile_slurm, slurm_state, state_word, submit_runs)
from fmae.queue import Job, Queue, read_status_fast
from fmae.runs import FINAL_STATES

log = logging.getLogger("fmae.scheduler")


class SlurmExecutor:
    name = "slurm"
    started_word = "submitted"

    def __init__(self, project: Any, queue: Queue, grace: float) -> None:
        self.project, self.queue = project, queue
        self.local = (getattr(project, "slurm", {}) or {}).get("cluster", "slurm") == "local"
        self.asked = float("-inf")  # when sacct was last asked (monotonic seconds)

    def owns(self, job: Job) -> bool:
        return (job.slot or "").startswith(SLOT_PREFIX)

    def place(self, job: Job, in_use: set[str]) -> Placement | None:
        return Placement((f"{SLOT_PREFIX}{job.id}",))

    def launch(self, claimed: list[Claimed]) -> list[Handle | Refused]:
        shapes: dict[int, list[Claimed]] = {}  # one array per GPU count: an array's jobs share their resources
        for c in claimed:
            shapes.setdefault(c.job.gpus, []).append(c)
        done: list[Handle | Refused] = []
        for gpus, group in shapes.items():
            try:
                ids = submit_runs([c.job.path for c in group], self.project, gpus=gpus, local=self.local)
            except FmaeError as e:  # submit_runs marked the runs failed with the reason
                done += [Refused(c.job, str(e)) for c in group]
                continue
            if len(group) > 1:
                log.info("%d runs on %d GPU(s) each submitted as one job array (%s…)", len(group), gpus, ids[0])
            done += [Handle(c.job, c.placement.slots, self.name, where=f"slurm job {i}") for c, i in zip(group, ids)]
        return done

    def find(self, job: Job, record: bool = True) -> Handle | None:
        # nothing of a Slurm job is recorded in the queue row: `record` changes nothing here
        job_id = (read_status_fast(job.path) or {}).get("slurm_job_id")
        if not job_id:
            return None  # claimed, but its scheduler died before the submission was recorded
        with contextlib.suppress(Exception):
            load_job(job.path)  # registers it with submitit's watcher, so the next sacct asks about it too
        return Handle(job, slots_of(job), self.name, where=f"slurm job {job_id}")

    def poll(self, h: Handle) -> Ended | None:
        self._ask_sacct()
        try:
            reconcile_slurm(h.job.path, cached=True)  # Slurm ended it before the trainer could say so
        except FmaeError:
            return Ended(None)  # the run folder is gone or broken: the scheduler records why
        status = read_status_fast(h.job.path) or {}
        state = status.get("state")
        if state not in FINAL_STATES:
            return None
        if state == "cancelled" and not self._job_over(h):
            return None  # a preempted trainer stops as on a cancel; the job requeues it in a moment
        return Ended(None)

    def _job_over(self, h: Handle) -> bool:
        with contextlib.suppress(Exception):
            return state_word(slurm_state(h.job.path, cached=True) or "UNKNOWN") in TERMINAL_STATES
        return True

    def _ask_sacct(self) -> None:
        """One sacct call about every job this process follows (submitit's watcher batches them)."""
        if self.local or time.monotonic() - self.asked < SACCT_EVERY_S:
            return
        self.asked = time.monotonic()
        import submitit

        submitit.SlurmJob.watcher.update()

    def cancel(self, h: Handle, hard: bool) -> str:
        """scancel (a local job: SIGTERM to its controller, which forwards it to the tasks) — never a
        process group from status.json: on Slurm it is a compute node's, and submitit's local controller
        shares the group of the scheduler that started it."""
        if hard:  # Slurm escalates itself (SIGKILL after KillWait); nothing harder to send from here
            h.killed = True
            return "left to Slurm (it kills what outlives scancel)"
        try:
            said = cancel_slurm(h.job.path)
        except FmaeError as e:
            return f"cancel requested, but {e}"
        return f"cancelling: {said} (it saves a checkpoint and stops)"
