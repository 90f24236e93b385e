"""The scheduler's notifications: `[scheduler] notify` in fmae.toml names a command (an argument list,
never a shell string) run when a run ends `done` or `failed`, or fails on a non-finite loss.

Events: `done`, `failed`, `nonfinite_loss` (the trainer fails a run whose loss is nan or inf). In the
command's arguments `{event}`, `{run}` (the run id), `{state}`, `{folder}` and `{message}` (the run's
error, or "done") are filled in; a command that names none of them gets the event, run id, folder and
message appended. The command runs detached (its own session, output appended to
runs/scheduler.log) under a small watchdog process: one that fails is logged, one still running after
`notify_timeout_s` is killed and logged, whether or not the scheduler still runs. Neither stops nor
stalls the scheduler: it never waits for one.

No torch here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

log = logging.getLogger("fmae.scheduler")

EVENTS = ("done", "failed", "nonfinite_loss")
FIELDS = ("event", "run", "state", "folder", "message")
# The trainer's message for a non-finite loss (fmae/train/trainer.py): "loss is nan at epoch 3, step 41 — …"
_NONFINITE = re.compile(r"^loss is [-+]?(nan|inf)\b", re.IGNORECASE)


def event_of(state: str, error: str | None) -> str | None:
    """The event a run's end is (None for a cancel: the user asked for it)."""
    if state == "done":
        return "done"
    if state == "failed":
        return "nonfinite_loss" if error and _NONFINITE.match(error) else "failed"
    return None


def command_for(template: tuple[str, ...] | list[str], values: dict[str, str]) -> list[str]:
    """The argument list for one event: placeholders filled in each argument, or the event appended."""
    if any("{" + f + "}" in arg for arg in template for f in FIELDS):
        filled = []
        for arg in template:
            for f in FIELDS:
                arg = arg.replace("{" + f + "}", values[f])
            filled.append(arg)
        return filled
    return [*template, values["event"], values["run"], values["folder"], values["message"]]


class Notifier:
    """Starts the command for each event through a watchdog (`python -m fmae.notify`) in its own
    session, which enforces the timeout and logs a failure even after the scheduler has exited."""

    def __init__(self, project: Any) -> None:
        self.template = tuple(getattr(project, "notify", ()) or ())
        self.timeout = float(getattr(project, "notify_timeout_s", 30.0))
        self.log_path = project.runs_dir / "scheduler.log"
        self.sent: list[subprocess.Popen] = []

    def ended(self, job: Any, state: str, error: str | None) -> None:
        """Run the command for a run that ended (nothing when none is configured or it was cancelled)."""
        event = event_of(state, error)
        if not self.template or event is None:
            return
        values = {"event": event, "run": job.run_id, "state": state, "folder": str(job.path),
                  "message": error or state}
        args = command_for(self.template, values)
        what = f"{event} {job.run_id}"
        watchdog = [sys.executable, "-m", "fmae.notify", str(self.timeout), str(self.log_path), what, "--", *args]
        try:
            with open(self.log_path, "ab") as out:
                self.sent.append(subprocess.Popen(watchdog, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                                  start_new_session=True, close_fds=True))
        except OSError as e:
            log.error("notify (%s): could not start %s: %s", what, args[0], e)
            return
        log.info("notify (%s): %s", what, args[0])

    def reap(self) -> None:
        """Collect the watchdogs that ended (no zombies); never waits."""
        self.sent = [p for p in self.sent if p.poll() is None]


def _watch(timeout: float, log_path: str, what: str, args: list[str]) -> int:
    """Run one notification command and say in the scheduler's log how it went wrong, if it did."""
    def say(level: str, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{stamp}.000 {level} notify ({what}): {text}\n")

    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as e:  # not installed, not executable
        say("ERROR", f"could not run {args[0]}: {e}")
        return 1
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole command
        proc.wait()
        say("WARNING", f"{args[0]} still ran after {timeout:g} s (notify_timeout_s): killed")
        return 1
    if code != 0:
        say("WARNING", f"{args[0]} exited with code {code}")
    return code


if __name__ == "__main__":  # python -m fmae.notify TIMEOUT LOG WHAT -- COMMAND…
    _t, _log, _what, _sep, *_args = sys.argv[1:]
    sys.exit(_watch(float(_t), _log, _what, _args))
