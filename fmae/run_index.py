"""The runs folder's index (`RunIndex`): what a slim `RunScanner` read of each run folder, kept under the
signature it was read at, so that the app's first look in a new process reads only the folders whose
signature moved. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from fmae.atomic_write import write_bytes_atomic
from fmae.runs import RunInfo

FIRST_PART = 50  # a first look hands over its first part at this many runs, doubling up to LAST_PART
LAST_PART = 8000
INDEX_NAME = ".runs-table.json"  # a slim scanner's first look in a new process starts from this
INDEX_VERSION = 4  # 3: a signature is one flat list; 4: each run with its owner's extra (3 is read, then rewritten)


class RunIndex:
    """What a slim scanner read of each run folder (info with a slim summary, tags, images/s), kept in the
    runs folder under the signature it was read at, so that the app's first look in a new process reads
    only the folders whose signature moved: at 10,000 runs, one JSON file instead of 30,000 files and a
    TOML parse each (~3 s). One JSON line a run, newest first as a first look goes, so the look reads the
    index as it goes and the first rows show before the rest of the file is parsed. The folders stay the
    truth: a missing, damaged or other release's index only costs one slow look, and an entry is trusted
    exactly as far as the scanner trusts its own memory between looks (every file that can change is
    replaced atomically, moving the folder's mtime)."""

    def __init__(self, runs_dir: Path) -> None:
        self.path = runs_dir / INDEX_NAME
        self.runs_dir = runs_dir
        self.stale = False  # it holds a run the look did not ask for (one gone), or is damaged
        self.hits = 0
        self._lines: Any = None  # the open file, read in chunks of lines
        self._next: list | None = None  # the next entry not yet asked for
        self._ahead: list[list] = []  # parsed entries after it, reversed (popped from the end)
        self._chunk = FIRST_PART
        self.extras_tag: str | None = None  # what the owner's extras are (see RunScanner.extras)
        self.extra: Any = None  # the last run `get` gave: its owner's extra, None when there is none
        self._extras_match = False
        self._size = 10

    def open(self) -> None:
        try:
            self._lines = open(self.path, "rb")
            header = json.loads(self._lines.readline())
            version = header.get("fmae_runs_table") if isinstance(header, dict) else None
            if version not in (3, INDEX_VERSION):
                raise ValueError("another release's index")
            if version == 3:  # read as it is, then written again in this release's form
                self.stale, self._size = True, 9
            self._extras_match = self.extras_tag is not None and header.get("extras") == self.extras_tag
            if self.extras_tag is not None and not self._extras_match:
                self.stale = True  # written again with this owner's extras
        except (OSError, ValueError):
            self.close(stale=True)
            return
        self._advance()

    def _advance(self) -> None:
        self._next = None
        if not self._ahead and self._lines is not None:
            # A chunk of lines parsed as one array: one parse shares the key strings of its runs' dicts
            # (a line at a time made every run's keys anew: +40 MiB at 10,000 runs). Chunks double.
            lines = [line for line in (self._lines.readline() for _ in range(self._chunk)) if line.strip()]
            self._chunk = min(2 * self._chunk, LAST_PART)
            try:
                entries = json.loads(b"[" + b",".join(lines) + b"]")
                size = self._size
                if not all(isinstance(e, list) and len(e) == size and isinstance(e[0], str) for e in entries):
                    raise ValueError("not an entry")
            except ValueError:
                self.close(stale=True)
                return
            self._ahead = entries[::-1]
        if not self._ahead:
            self.close()
            return
        self._next = self._ahead.pop()

    def close(self, stale: bool = False) -> None:
        if self._lines is not None:
            left = self._next is not None or bool(self._ahead) or bool(self._lines.readline().strip())
            self.stale = self.stale or stale or left
            self._lines.close()
        elif stale:
            self.stale = True
        self._lines, self._next, self._ahead = None, None, []

    def get(self, run_id: str, sig: tuple | None) -> tuple[RunInfo, list[str], float | None] | None:
        """The run as it was read under `sig`, or None (not indexed, read under another, damaged). Asked
        newest first: entries passed over are of runs gone."""
        while self._next is not None and self._next[0] > run_id:
            self.stale = True
            self._advance()
        entry = self._next
        if entry is None or entry[0] != run_id:
            return None
        self._advance()
        _, old_sig, state, config, status, summary, problem, tags, rate = entry[:9]
        self.extra = entry[9] if self._extras_match and len(entry) > 9 else None
        if sig is None or not isinstance(old_sig, list) or tuple(old_sig) != sig or not (
                isinstance(config, dict) and isinstance(status, dict) and isinstance(tags, list)):
            return None
        self.hits += 1
        return RunInfo(run_id, self.runs_dir / run_id, state, config, status, summary, problem), tags, rate

    def save(self, got: dict[str, tuple[tuple, tuple[RunInfo, list[str], float | None]]],
             extras: dict[str, Any] | None = None) -> None:
        """Every run of a look (id -> (signature, what it gave), newest first), each with its owner's
        extra (`extras`, under `extras_tag`); a read-only runs folder keeps none."""
        extra = (extras or {}).get

        def lines() -> Iterator[bytes]:  # one at a time: the whole index is never a string in memory
            yield json.dumps({"fmae_runs_table": INDEX_VERSION, "extras": self.extras_tag}).encode() + b"\n"
            encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps makes one a call
            for run_id, (sig, (info, tags, rate)) in got.items():
                yield encode([run_id, sig, info.state, info.config, info.status, info.summary, info.problem,
                              tags, rate, extra(run_id)]).encode() + b"\n"

        try:
            write_bytes_atomic(self.path, lines())
        except (OSError, TypeError, ValueError):
            pass  # the look was right; only the next process's first look is slower
