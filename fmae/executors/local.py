"""Runs on this machine: `fmae exec RUN` (with `--nproc N`, torchrun) detached on free GPU/CPU slots.

Each trainer starts in its own session (so a hang-up, the app closing or the scheduler dying leaves it
running) with `CUDA_VISIBLE_DEVICES` set and its output appended to train.log. Its pid leads the
process group a cancel signals: SIGTERM (the trainer checkpoints and ends `cancelled`; torchrun's
workers are in the group too), SIGKILL when it overruns. A trainer holds `RUN/.exec.lock` for its whole
life, so a run whose lock is held has a live trainer, whoever started it.

No torch here: the scheduler imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from fmae.errors import FmaeError
from fmae.executors import Claimed, Ended, Handle, Placement, Refused, says_ended, slots_of
from fmae.queue import Job, Queue, read_status_fast
from fmae.run_lock import exec_lock_holder, trainer_alive

log = logging.getLogger("fmae.scheduler")


class LocalExecutor:
    name = "local"
    started_word = "launched"

    def __init__(self, project: Any, queue: Queue, grace: float) -> None:
        self.project, self.queue, self.grace = project, queue, grace

    def owns(self, job: Job) -> bool:
        return True  # what no cluster executor claims is a process on this machine

    def place(self, job: Job, in_use: set[str]) -> Placement | None:
        from fmae import gpus as G

        found = G.discover()
        slots = [s for s in G.plan_slots(self.project, found) if s.name not in in_use]
        picked = G.assign(slots, job.gpus, found, self.project.min_free_memory_gib)
        if picked is None:
            return None
        return Placement(tuple(s.name for s in picked), G.cuda_env(picked))

    def launch(self, claimed: list[Claimed]) -> list[Handle | Refused]:
        return [self._spawn(c) for c in claimed]

    def _spawn(self, c: Claimed) -> Handle | Refused:
        job = c.job
        cmd = [sys.executable, "-m", "fmae", "exec", str(job.path)]
        if job.nproc > 1:
            cmd += ["--nproc", str(job.nproc)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **c.placement.env}
        try:
            with open(c.run.log_path, "ab") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                        start_new_session=True, close_fds=True, cwd=str(job.path))
        except OSError as e:
            why = f"could not start the trainer: {e}"
            with contextlib.suppress(FmaeError, OSError):  # the folder itself may be what went missing
                c.run.mark_ended("failed", error=why)
            return Refused(job, why)
        return Handle(job, c.placement.slots, self.name, pid=proc.pid, pgid=proc.pid, proc=proc,
                      where=f"pid {proc.pid}")

    def find(self, job: Job, record: bool = True) -> Handle | None:
        """The live trainer of a launching/running row: the run folder's lock holder, or the process
        launched for it (still importing torch); None when the folder says it ended, or nobody lives.
        `record`: the scheduler adopting it writes the pid into the queue row; a cancel only looks (and
        finds nothing for a run that another machine says it runs)."""
        if not record and (read_status_fast(job.path) or {}).get("host") not in (None, socket.gethostname()):
            return None
        live = exec_lock_holder(job.path)
        if live is None and says_ended(job.path):
            return None
        if live is None and trainer_alive(job.path, job.pid):
            live = job.pid
        if live is None:
            return None
        return self._follow(job, live or job.pid or 0, record)

    def _follow(self, job: Job, pid: int, record: bool = True) -> Handle:
        pgid = 0
        if pid:
            pgid = _pgid(pid) or pid
            if record:
                job = self.queue.launched(job.id, pid, pgid)
        return Handle(job, slots_of(job), self.name, pid=pid, pgid=pgid, where=f"pid {pid or '?'}")

    def poll(self, h: Handle) -> Ended | None:
        if h.proc is not None:
            code = h.proc.poll()
            if code is not None and (other := exec_lock_holder(h.job.path)) is not None:
                # Our trainer exited (EXIT_ALREADY_RUNNING) because a live one holds the run folder's lock,
                # started by a scheduler that died before recording it: follow that one.
                followed = self._follow(h.job, other)
                h.job, h.proc, h.pid, h.pgid, h.where = followed.job, None, followed.pid, followed.pgid, followed.where
                log.info("adopted job %d (%s), pid %s", h.job.id, h.job.run_id, other or "?")
                return None
            if code is not None:
                return Ended(code)
            if says_ended(h.job.path):  # it said it ended: it must exit soon
                h.ended_at = h.ended_at or time.time()
                if time.time() - h.ended_at > self.grace and not h.killed:
                    log.warning("job %d ended %.0f s ago but its process %d still runs: SIGKILL", h.job.id,
                                self.grace, h.pid)
                    self.cancel(h, hard=True)
            return None
        # adopted: the folder's final state first, then its lock
        if says_ended(h.job.path) or not trainer_alive(h.job.path, h.pid):
            return Ended(None)
        return None

    def cancel(self, h: Handle, hard: bool) -> str:
        """SIGTERM (hard: SIGKILL) to the trainer's process group — never to one that holds this process
        or the runs folder's scheduler (a group recorded wrongly must not take the scheduler down)."""
        group = h.pgid or h.pid
        if hard:
            h.killed = True
        why = self._unsafe(group)
        if why:
            return f"cancel requested (process group {group} not signalled: {why}; the scheduler stops it)"
        sig = signal.SIGKILL if hard else signal.SIGTERM
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return "cancel requested (its process is gone; the scheduler records the end)"
        except PermissionError:
            return f"cancel requested (no permission to signal process group {group})"
        if hard:
            return f"SIGKILL sent to process group {group}"
        return f"cancelling: SIGTERM sent to process group {group} (it saves a checkpoint; SIGKILL after a grace period)"

    def _unsafe(self, group: int) -> str | None:
        """Why signalling `group` would hit what must live on, or None when it is the trainer's alone."""
        if group <= 1:
            return "no process group yet"
        if group == os.getpgrp():
            return "it is this process's own group"
        from fmae.scheduler import holder

        info = holder(self.queue.runs_dir) or {}
        pid = info.get("pid")
        if isinstance(pid, int) and info.get("host") == socket.gethostname() and _pgid(pid) == group:
            return "it holds the scheduler"
        return None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
