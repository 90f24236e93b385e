"""The trainer's DataLoader, with the process handling that keeps a bad image from hanging a run.

An exception inside a worker (a damaged JPEG, a decompression bomb) reaches the trainer as one
`FmaeError` naming the image and what to do, and the workers are shut down at once, so the run ends
`failed` and the process exits within seconds. Workers live in their own process group: a cancel's
SIGTERM to the trainer's group reaches only the trainer (which finishes its step and checkpoints),
while a SIGTERM sent to a worker itself (multiprocessing's terminate at exit) still ends it.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from fmae.errors import FmaeError
from fmae.run_lock import held_exec_lock_fds
from fmae.runs import one_line

_FIX = "fix or remove it (`fmae data check` lists every bad image), then retry the run"


class ImageFailed(FmaeError):
    """An item of the data set could not be read. Raised in a worker, it comes back to the trainer
    re-created from the worker's formatted traceback: `reason` recovers the one line."""

    @property
    def reason(self) -> str:
        text = str(self)
        if "Original Traceback" not in text:
            return text
        marker = f"{type(self).__name__}: "
        tail = [line for line in text.splitlines() if line.strip()]
        for line in reversed(tail):
            if marker in line:
                return line.split(marker, 1)[1].strip()
        return tail[-1].strip() if tail else text


class NamedErrors(Dataset):
    """A data set whose item errors name the image file (when the set knows its paths)."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.data[index]
        except Exception as e:
            raise ImageFailed(self._reason(index, e)) from None

    def _reason(self, index: int, e: Exception) -> str:
        paths = getattr(self.data, "paths", None)
        path = str(paths[index]) if paths is not None and 0 <= index < len(paths) else None
        text = one_line(e, None) or type(e).__name__
        if isinstance(e, FmaeError):  # load_rgb's own one line already names the file and the fix
            return text if path is None or path in text else f"{path}: {text}"
        where = f"{path}: " if path else f"item {index}: "
        return f"{where}cannot read the image ({type(e).__name__}: {text[:200]}) — {_FIX}"


class SafeLoader(DataLoader):
    """A DataLoader whose iteration turns a worker's item error into its one-line ImageFailed and stops
    the workers before the error leaves (so nothing waits on them at exit)."""

    def __iter__(self):
        it = super().__iter__()
        try:
            for batch in it:
                yield batch
        except ImageFailed as e:
            raise ImageFailed(e.reason) from None
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def make_loader(data: Dataset, batch_sampler, workers: int, pin_memory: bool) -> DataLoader:
    # A private generator: creating a loader must not draw from the global RNG, or a resumed run's
    # drop-path randomness would differ from an unbroken run's.
    return SafeLoader(NamedErrors(data), batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator(), worker_init_fn=worker_init if workers else None)


def worker_init(worker_id: int) -> None:
    # Out of the trainer's process group: a cancel (SIGTERM to the group) is the trainer's to handle;
    # it finishes its step and checkpoints, and its workers end with it. SIGTERM keeps its default
    # action, so shutting the workers down (terminate) always ends them.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The forked copy of the trainer's run-folder lock is closed: a worker outliving a killed trainer
    # (for the seconds until it notices) must not make the run look alive.
    for fd in held_exec_lock_fds():
        try:
            os.close(fd)
        except OSError:
            pass
