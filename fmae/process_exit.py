"""Ending a command that trained, without the interpreter's teardown.

After a trainer ends, CPython's exit frees every module (torch's thousands of objects), runs torch's and
TensorBoard's atexit hooks and joins leftover threads: a second or more in which the run says `done`
but its process, and so its slot in the scheduler, is still there. Everything a run writes is closed
and synced by then (the trainer closes the TensorBoard writer before it writes `done`, `run_log`
closes and fsyncs its logs, the run lock is released), so `fmae exec` and the other training commands
leave with `os._exit` once their output is flushed and their loader workers are joined.

Only a process that trained to an end (done or cancelled) takes this exit, and only through `run_app`,
the console script's entry: tests that call the Typer app in-process, or `main()` for bad-input cases
(which never reach a trainer's end), keep the ordinary exit. No torch here: `fmae.cli.common` imports it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys

_trained = False


def trained() -> None:
    """Say that this process ran a trainer to its end: its exit may skip the teardown."""
    global _trained
    _trained = True


def exit_code(code: object) -> int:
    """SystemExit's code as the process's exit status, as the interpreter would make it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1


def exit_now_if_trained(code: object) -> None:
    """After a trainer's end: flush what this process printed, stop its children, and leave now."""
    if not _trained:
        return
    status = exit_code(code)
    logging.shutdown()  # every handler flushed and closed (train.log when the trainer wrote it itself)
    for child in multiprocessing.active_children():  # DataLoader workers normally ended with their loop
        child.join(timeout=5)
        if child.is_alive():
            child.terminate()
            child.join(timeout=1)
    for stream in (sys.stdout, sys.stderr):
        _flush_and_sync(stream)
    os._exit(status)


def _flush_and_sync(stream) -> None:
    try:
        stream.flush()
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    try:
        os.fsync(fd)  # under the scheduler stdout and stderr are train.log
    except OSError:
        pass  # a terminal or a pipe cannot be synced, and needs not be
