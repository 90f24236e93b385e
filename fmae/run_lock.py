"""One trainer per run folder: the lock `fmae exec` holds on `<run>/.exec.lock` for its whole life.

The kernel drops the lock when the process dies (however it dies), so a lock that can be taken means no
trainer is alive: the scheduler's reconciliation believes that, not a pid that may be a zombie or reused.
No torch here: the scheduler and the app import this module.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from fmae.errors import FmaeError
from fmae.runs import pid_alive

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; the engine targets Linux
    fcntl = None  # type: ignore[assignment]


def proc_cmdline(pid: int) -> list[str]:
    """The argument list of a running process ([] when it is gone, a zombie, or unreadable)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


EXEC_LOCK = ".exec.lock"
EXIT_ALREADY_RUNNING = 3  # `fmae exec` of a run that another live trainer holds (documented in docs/robustness.md)


class AlreadyRunning(FmaeError):
    """A second trainer for one run folder: it exits at once, touching nothing."""

    exit_code = EXIT_ALREADY_RUNNING


_held_locks: dict[str, int] = {}  # run folder -> fd of the lock this process holds


@contextlib.contextmanager
def exec_lock(path: str | os.PathLike) -> Iterator[int]:
    """Hold the run folder's trainer lock while training (the pid goes into the file for readers);
    AlreadyRunning, at once, when a live trainer holds it."""
    key = os.fspath(Path(path).resolve())
    if key in _held_locks:  # re-entered by the same process (a test calling execute twice): ours already
        yield _held_locks[key]
        return
    fd = os.open(os.path.join(key, EXEC_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        for attempt in range(25):  # a reader's brief shared lock (exec_lock_holder) is not a trainer
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 24:
                    other = exec_lock_holder(key)
                    who = f"pid {other}" if other else "another process"
                    raise AlreadyRunning(f"{key}: this run is already being trained by {who} — wait for it to end, "
                                         "or cancel it (`fmae queue cancel`); a second trainer would write the same "
                                         "files") from None
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held_locks[key] = fd
        try:
            yield fd
        finally:
            del _held_locks[key]
    finally:
        os.close(fd)  # releases the lock


def held_exec_lock_fds() -> list[int]:
    """The fds of trainer locks this process holds: a forked helper (a DataLoader worker) closes its
    copies, so that it never keeps a dead trainer's lock alive."""
    return list(_held_locks.values())


def exec_lock_holder(path: str | os.PathLike) -> int | None:
    """The pid of the live trainer holding this run folder's lock (0 when it holds it but has not written
    its pid yet), or None when no trainer is alive."""
    lock = Path(path) / EXEC_LOCK
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        return None  # we could take it: nobody holds it (closing the fd releases our shared lock)
    finally:
        os.close(fd)


def trainer_alive(path: str | os.PathLike, pid: int | None) -> bool:
    """Whether a trainer for this run folder is alive: its lock is held, or the process launched for it
    still runs and has not taken the lock yet (it is importing torch)."""
    if exec_lock_holder(path) is not None:
        return True
    if not pid or not pid_alive(int(pid)):
        return False
    args = proc_cmdline(int(pid))
    return "exec" in args and any(os.path.abspath(a) == os.path.abspath(os.fspath(path)) for a in args)
