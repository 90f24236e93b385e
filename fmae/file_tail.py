"""The end of a growing file, read by byte offset: each call reads only the bytes appended since the last,
up to the last complete line. metrics.jsonl (runs.MetricsTail) and train.log (run_watch.LogTail) are both
read through it."""

from __future__ import annotations

import os
from pathlib import Path


class FileTail:
    """`read_complete()` returns the new bytes up to and including the last newline (b"" when none came).

    An unfinished last line waits for its newline (unless it grows past `max_pending` bytes). A file that
    shrank or was replaced (a new inode) is read again and `resets` counts up, so a caller that kept what
    it read can drop it. `start_bytes`: on first sight and after a reset, start this far from the end (the
    first, cut line skipped) rather than at 0. `missing`: the open errors that mean "nothing yet"."""

    def __init__(self, path: str | os.PathLike, start_bytes: int | None = None, max_pending: int | None = None,
                 missing: type[OSError] = FileNotFoundError) -> None:
        self.path = Path(path)
        self.offset = 0  # bytes consumed: everything before it was returned
        self.bytes_read = 0  # total bytes read from disk, for callers (and tests) checking the cost
        self.resets = 0
        self.start_bytes = start_bytes
        self.max_pending = max_pending
        self.missing = missing
        self._identity: tuple[int, int] | None = None

    def read_complete(self) -> bytes:
        try:
            f = open(self.path, "rb")
        except self.missing:  # not written yet (or being replaced): nothing new
            return b""
        with f:
            st = os.fstat(f.fileno())
            identity = (st.st_dev, st.st_ino)
            replaced = self._identity is not None and (identity != self._identity or st.st_size < self.offset)
            skip_partial = False
            if replaced:
                self.resets += 1
            if replaced or self._identity is None:
                self.offset = 0 if self.start_bytes is None else max(0, st.st_size - self.start_bytes)
                skip_partial = self.offset > 0
            self._identity = identity
            if st.st_size == self.offset:
                return b""
            f.seek(self.offset)
            chunk = f.read(st.st_size - self.offset)
        self.bytes_read += len(chunk)
        if skip_partial:  # started mid-file: the first line is a fragment
            cut = chunk.find(b"\n") + 1
            self.offset += cut
            chunk = chunk[cut:]
        end = chunk.rfind(b"\n") + 1
        if end == 0 and self.max_pending is not None and len(chunk) > self.max_pending:
            end = len(chunk)
        self.offset += end
        return chunk[:end]
