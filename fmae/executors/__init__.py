"""Where a queued run trains, behind one interface the scheduler talks to.

- local (`fmae.executors.local`): `fmae exec RUN` (torchrun for multi-GPU runs) detached on a GPU/CPU
  slot of this machine, in its own process group; cancel = signals to that group.
- slurm (`fmae.executors.slurm`): the same `execute(run)` submitted through submitit (a matrix as one
  job array); submitit's local executor runs that very path on this machine (tests, machines without
  Slurm).

An executor does four things for the scheduler, which holds one map of `Handle`s and nothing else
per job:
  place(job, in_use)  the slots the job would take now (None: not now); claims nothing
  launch(claimed)     start the jobs the scheduler has already claimed (`queued → launching`)
  poll(handle)        `Ended(code)` once the work is over, else None
  cancel(handle, hard)  ask the work to stop (hard: make it); says what it did
and `find(job)` after a restart: the live work of a launching/running row, or None. Only the trainer
writes "running" into status.json; an executor records where the work is (pid, Slurm job id).
`fmae queue cancel` and the app stop a job through the same seam (`stop_job`): the executor that owns
the job finds its work and cancels it its own way — never a process group read from status.json, which
for a Slurm job is another machine's, or (submitit's local cluster) the scheduler's own.

Nothing here is imported eagerly: this package must stay cheap to import (no torch, no submitit).
"""

from __future__ import annotations

import importlib
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from fmae.queue import Job, Queue
    from fmae.runs import RunDir

# executor.kind in fmae.toml -> the module:class that does it (imported when first used)
KINDS = {"local": "fmae.executors.local:LocalExecutor", "slurm": "fmae.executors.cluster:SlurmExecutor"}
FALLBACK = "local"  # follows every claimed job no other executor's slot names (a process on this machine)


@dataclass(frozen=True)
class Placement:
    slots: tuple[str, ...]  # slot names ("gpu0#0", "cpu1", "slurm7"), joined with "+" in the queue row
    env: dict[str, str] = field(default_factory=dict)  # CUDA_VISIBLE_DEVICES for a local run


@dataclass(frozen=True)
class Claimed:
    """A job the scheduler claimed (`launching`) and an executor is to start."""
    job: Job
    run: RunDir
    placement: Placement


@dataclass
class Handle:
    """One job's work as the scheduler follows it."""
    job: Job
    slots: tuple[str, ...]
    executor: str  # the KINDS name that follows it
    pid: int = 0  # the local process followed; 0 = none on this machine (a cluster job)
    pgid: int = 0  # its process group, which a cancel signals (torchrun's workers are in it)
    proc: subprocess.Popen | None = None  # None for work adopted from an earlier scheduler
    where: str = ""  # for the log: "pid 123", "slurm job 4567"
    termed: bool = False  # the cancel's first (soft) stop was sent
    killed: bool = False  # the hard one too
    ended_at: float | None = None  # when status.json first said a final state while the work lived


@dataclass(frozen=True)
class Ended:
    code: int | None = None  # the process's exit code when known (a local child), else None


@dataclass(frozen=True)
class Refused:
    """A claimed job that could not be started, and why (one line): the scheduler fails it."""
    job: Job
    why: str


class Executor(Protocol):
    name: str
    started_word: str  # for the log: "launched", "submitted"

    def owns(self, job: Job) -> bool: ...
    def place(self, job: Job, in_use: set[str]) -> Placement | None: ...
    def launch(self, claimed: list[Claimed]) -> list[Handle | Refused]: ...
    def find(self, job: Job, record: bool = True) -> Handle | None: ...
    def poll(self, handle: Handle) -> Ended | None: ...
    def cancel(self, handle: Handle, hard: bool) -> str: ...


def make_executor(kind: str, project: Any, queue: Queue, grace: float) -> Executor:
    """The executor for `executor.kind = kind`; an unknown kind names the valid ones."""
    from fmae.errors import FmaeError

    if kind not in KINDS:
        raise FmaeError(f"executor.kind = {kind!r}: choose one of {', '.join(KINDS)}")
    module, _, cls = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(project, queue, grace)


def owner(job: Job, executor: Callable[[str], Executor]) -> Executor:
    """The executor that follows a claimed job: the one whose slot names it carries — a run submitted to
    Slurm stays Slurm's after fmae.toml says local again —, else this machine's. `executor(kind)` makes
    (or returns the cached) executor of a kind."""
    for kind in KINDS:
        if kind != FALLBACK and executor(kind).owns(job):
            return executor(kind)
    return executor(FALLBACK)


def stop_job(job: Job, queue: Queue) -> str:
    """A cancel from outside the scheduler (`fmae queue cancel`, the app): the job's owner finds its live
    work, without recording anything in the queue, and asks it to stop (the scheduler sends the hard stop
    after its grace period). Says what was done, in words."""
    found: dict[str, Executor] = {}

    def executor(kind: str) -> Executor:  # a cancel reads no project setting: the job and its folder say all
        return found.setdefault(kind, make_executor(kind, None, queue, grace=0.0))

    ex = owner(job, executor)
    handle = ex.find(job, record=False)
    if handle is None:
        return "cancel requested (no live work found for it here; the scheduler records the end)"
    return ex.cancel(handle, hard=False)


def says_ended(path: Any) -> bool:
    """Whether the run folder says the run ended (done, failed, cancelled): believed before any pid."""
    from fmae.queue import read_status_fast
    from fmae.runs import FINAL_STATES

    status = read_status_fast(path)  # None when missing or damaged: never raises
    return status is not None and status["state"] in FINAL_STATES


def slots_of(job: Job) -> tuple[str, ...]:
    return tuple((job.slot or "").split("+")) if job.slot else ()
