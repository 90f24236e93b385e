"""The trainer's log handlers: stderr, and the run folder's train.log (rank 0 only; see dist.RankFilter);
and, at the end, the run folder's appended files closed and synced (`fmae/process_exit.py` relies on it)."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

from fmae.runs import RunDir
from fmae.train.dist import DistInfo, RankFilter


def setup_logging(run: RunDir, info: DistInfo, quiet: bool) -> list[logging.Handler]:
    """Log to stderr, and to train.log unless stdout already goes there (the scheduler redirects it)."""
    logger = logging.getLogger("fmae")
    logger.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = []
    stream = logging.StreamHandler(sys.stderr)
    if quiet:
        stream.setLevel(logging.WARNING)
    handlers.append(stream)
    if info.is_main and not _stdout_is(run.log_path):
        handlers.append(logging.FileHandler(run.log_path, encoding="utf-8"))
        stream.addFilter(lambda record: not getattr(record, "traceback", False))  # tracebacks go to train.log
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RankFilter(info))
        logger.addHandler(h)
    logger.propagate = False
    return handlers


def _stdout_is(path: Path) -> bool:
    try:
        a, b = os.fstat(sys.stdout.fileno()), os.stat(path)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def close_logging(run: RunDir, handlers: list[logging.Handler]) -> None:
    """Close the handlers, then fsync what the run appended to (train.log, metrics.jsonl, the
    TensorBoard events): nothing of a finished run waits in a buffer when its process leaves."""
    logger = logging.getLogger("fmae")
    for h in handlers:
        logger.removeHandler(h)
        h.close()
    for path in [run.log_path, run.metrics_path, *run.path.glob("events.out.tfevents.*")]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # never written (a run that failed before its first record)
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
