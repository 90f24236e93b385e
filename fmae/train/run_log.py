"""The trainer's log handlers: stderr, and the run folder's train.log (rank 0 only; see dist.RankFilter);
and, at the end, the run folder's appended files closed and synced (`fmae/process_exit.py` relies on it)."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

from fmae.metric_catalogue import AUC, F1_05, F1_BEST, TUNED_TAG
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


def au_epoch_line(record: dict) -> str:
    """The AU numbers of one evaluation for train.log's per-epoch line; "" for other tasks. The all-positive F1
    sits beside F1@0.5, as in the end-of-run line: an F1@0.5 below it means the run learned nothing."""
    if "f1_05_mean" not in record:
        return ""
    positive = record.get("f1_all_positive_mean")
    trivial = f" (all-positive F1 {positive:.4f})" if positive is not None else ""
    return (f"; {F1_05.short} {record['f1_05_mean']:.4f}{trivial}, {F1_BEST.name} {record['f1_best_mean']:.4f} "
            f"@{record['best_threshold']:.2f} {TUNED_TAG}, {AUC.short} {record['auc_mean'] or float('nan'):.4f}")


def _stdout_is(path: Path) -> bool:
    try:
        a, b = os.fstat(sys.stdout.fileno()), os.stat(path)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def finish_records(run: RunDir, tb) -> None:
    """Before a run says done: the TensorBoard writer closed (it buffers for 120 s) and the records
    (metrics.jsonl, the events) fsynced, so `done` means they are whole on disk and the process has
    only its log to close after it."""
    if tb is not None:
        tb.close()
    _fsync([run.metrics_path, *run.path.glob("events.out.tfevents.*")])


def close_logging(run: RunDir, handlers: list[logging.Handler]) -> None:
    """Close the handlers, then fsync what the run appended to (train.log, metrics.jsonl, the
    TensorBoard events): nothing of a finished run waits in a buffer when its process leaves."""
    logger = logging.getLogger("fmae")
    for h in handlers:
        logger.removeHandler(h)
        h.close()
    _fsync([run.log_path, run.metrics_path, *run.path.glob("events.out.tfevents.*")])


def _fsync(paths: list[Path]) -> None:
    for path in paths:
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
