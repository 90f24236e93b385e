"""The trainer's last checkpoint: what it saves, and how a restarted process continues from it.

After any kill and retry, the run folder must read as an unbroken run's: the model, optimizer and RNG
continue from the checkpoint, and the records a killed attempt wrote after it (metrics.jsonl lines,
TensorBoard events) are cut off — all of them when there is no checkpoint yet and the run starts over.
"""

from __future__ import annotations

import logging
import os
import random
from typing import TYPE_CHECKING

import torch

from fmae.atomic_write import write_bytes_atomic
from fmae.models.checkpoint import read_checkpoint, save_checkpoint
from fmae.runs import read_metrics

if TYPE_CHECKING:
    from fmae.train.trainer import Trainer

log = logging.getLogger("fmae.train")


def save_last(t: Trainer) -> None:
    """checkpoints/last.pt: everything a resumed process needs, and how long metrics.jsonl was then."""
    if not t.info.is_main:
        return
    epoch, batch = t.position
    save_checkpoint(t.run.checkpoints / "last.pt", {
        "model": t.raw_model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else {},
        "epoch": epoch, "batch": batch, "step": t.step,
        "best": {"epoch": t.best["epoch"], "value": t.best["value"], "record": t.best.get("record")},
        "meters": t.meters,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": dict(t.cfg),
        # Where the records written so far end: a resume keeps exactly these. (By step alone, the
        # epoch-end records of a step that was checkpointed mid-epoch would survive and come again.)
        "metrics_bytes": _size(t.run.metrics_path),
    })


def restore(t: Trainer) -> None:
    """Continue from last.pt; without one, start over and clear what an earlier attempt recorded."""
    path = t.run.checkpoints / "last.pt"
    if not path.is_file():
        if t.info.is_main:
            cleared = clear_records(t.run)
            log.info("no checkpoint yet: starting from the beginning%s",
                     f" (cleared the earlier attempt's {', '.join(cleared)})" if cleared else "")
        return
    ck = read_checkpoint(path)
    t.raw_model.load_state_dict(ck["model"])
    t.optimizer.load_state_dict(ck["optimizer"])
    if ck.get("scaler"):
        t.scaler.load_state_dict(ck["scaler"])
    t.start = (int(ck["epoch"]), int(ck["batch"]))
    t.position = t.start
    t.step = int(ck["step"])
    t.best = dict(ck["best"])
    t.meters = {k: dict(v) for k, v in ck["meters"].items()}
    rng = ck["rng"]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if t.info.is_main:
        truncate_metrics(t.run, t.step, ck.get("metrics_bytes"))
    log.info("resumed from %s: epoch %d, batch %d, step %d", path, t.start[0] + 1, t.start[1], t.step)


def truncate_metrics(run, step: int, size: int | None = None) -> None:
    """Drop records a killed process wrote after its last checkpoint: they will be written again. With
    the file's length at the checkpoint, exactly what came after it; else (older checkpoints) every
    record past its step."""
    if size is not None and _size(run.metrics_path) >= int(size):
        with open(run.metrics_path, "rb") as f:
            kept = f.read(int(size))
        if len(kept) != _size(run.metrics_path):
            write_bytes_atomic(run.metrics_path, kept)
        return
    records = read_metrics(run.metrics_path)
    keep = [r for r in records if int(r.get("step", 0)) <= step]
    if len(keep) != len(records):
        import json

        text = "".join(json.dumps(r) + "\n" for r in keep)
        write_bytes_atomic(run.metrics_path, text.encode())


def clear_records(run) -> list[str]:
    """A start from the beginning: remove an earlier attempt's metrics.jsonl, summary.json and TensorBoard
    event files (they would hold its steps twice). Returns what was removed, in words."""
    removed = []
    for path, what in ((run.metrics_path, "metrics.jsonl"), (run.summary_path, "summary.json")):
        if path.exists():
            path.unlink()
            removed.append(what)
    events = list(run.path.glob("events.out.tfevents.*"))
    for path in events:
        path.unlink()
    if events:
        removed.append(f"{len(events)} TensorBoard event file(s)")
    return removed


def _size(path: os.PathLike) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
