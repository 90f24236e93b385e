"""The trainer's log handlers: stderr, and the run folder's train.log (rank 0 only; see dist.RankFilter)."""

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
