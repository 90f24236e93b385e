"""Reads what is new in one run folder, cheaply enough to ask twice a second: metrics.jsonl and
train.log by byte offset, the other files only when their stat says they changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from fmae.errors import FmaeError
from fmae.runs import MetricsTail, RunDir
from fmae_tui.widgets.log_tail import LogTail
from fmae_tui.widgets.run_update import RunUpdate


class RunPoller:
    def __init__(self, path: Path) -> None:
        self.run = RunDir(path)
        self.metrics = MetricsTail(self.run.metrics_path)
        self.log = LogTail(self.run.log_path)
        self._stamps: dict[str, tuple[int, int, int] | None] = {}
        self._readers: dict[str, Callable[[], Any]] = {
            "run.toml": lambda: (self.run.read_config(), self.run.read_provenance()),
            "status.json": self.run.read_status,
            "summary.json": self.run.read_summary,
            "notes.md": self.run.read_notes,
            "tags": self.run.read_tags,
        }

    def poll(self) -> RunUpdate:
        update = RunUpdate()
        resets = self.metrics.resets
        update.records = self.metrics.read_new()
        update.metrics_reset = self.metrics.resets != resets
        log_resets = self.log.resets
        update.log_lines = self.log.read_new()
        update.log_reset = self.log.resets != log_resets
        for name, read in self._readers.items():
            path = self.run.path / name
            try:
                st = os.stat(path)
                stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                stamp = None
            if name in self._stamps and stamp == self._stamps[name]:
                continue
            self._stamps[name] = stamp
            try:
                update.files[name] = read() if stamp is not None else None
            except (FmaeError, OSError, ValueError) as e:
                # Files are replaced whole: it stays broken until it is written again (a new stamp).
                update.errors[name] = str(e).replace(f"{self.run.path}{os.sep}", "")
        return update
