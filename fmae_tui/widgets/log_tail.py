"""The end of a growing text file (train.log), read by byte offset like MetricsTail reads metrics.jsonl:
each call reads only what was appended; a file that shrank or was replaced is read again from its end."""

from __future__ import annotations

import os
from pathlib import Path

START_BYTES = 64 * 1024  # on first sight of a long log, start this far from its end
MAX_PENDING = 16 * 1024  # an unfinished line longer than this is shown anyway


class LogTail:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset = 0
        self.bytes_read = 0
        self.resets = 0
        self._identity: tuple[int, int] | None = None

    def read_new(self) -> list[str]:
        """Complete lines appended since the last call (the first call: the last ones)."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return []
        with f:
            st = os.fstat(f.fileno())
            identity = (st.st_dev, st.st_ino)
            skip_partial = False
            if self._identity is None or identity != self._identity or st.st_size < self.offset:
                if self._identity is not None:
                    self.resets += 1
                self.offset = max(0, st.st_size - START_BYTES)
                skip_partial = self.offset > 0
            self._identity = identity
            if st.st_size == self.offset:
                return []
            f.seek(self.offset)
            chunk = f.read(st.st_size - self.offset)
        self.bytes_read += len(chunk)
        if skip_partial:  # started mid-file: the first line is a fragment
            cut = chunk.find(b"\n") + 1
            self.offset += cut
            chunk = chunk[cut:]
        end = chunk.rfind(b"\n") + 1
        if end == 0 and len(chunk) > MAX_PENDING:
            end = len(chunk)
        self.offset += end
        text = chunk[:end].decode("utf-8", errors="replace")
        # A progress bar redraws with carriage returns: keep what the terminal would show last.
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in lines]
