"""Watching run folders cheaply enough for a screen that looks every second or two: which runs of a runs
folder changed (`RunScanner`), and what is new in one run folder (`RunPoller`: metrics.jsonl and train.log
by byte offset, the other files only when their stat says they changed), and the rows a prediction run's
CSV gained (`CsvTail`). Torch-free: the app reads the disk through these in its worker threads.

The scanner works because every file of the run folder that can change (status.json, summary.json, tags,
notes.md) is replaced atomically, so a change renames a file into the folder and moves the folder's
mtime: one listing of the runs folder plus a few stats a run tell what to re-read, and only those runs
are read again.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from fmae.errors import FmaeError
from fmae.file_tail import FileTail
from fmae.run_index import FIRST_PART, INDEX_NAME, INDEX_VERSION, LAST_PART, RunIndex, slim_summary
from fmae.runs import FINAL_STATES, MetricsTail, RunDir, RunInfo
from fmae.runs import load_run as load_run_info

LOG_START_BYTES = 64 * 1024  # on first sight of a long log, start this far from its end
LOG_MAX_PENDING = 16 * 1024  # an unfinished log line longer than this is shown anyway
WATCHED = "status.json"  # also stat'ed: a writer that edits it in place (not by the contract) still shows
_WATCHED_PATH = os.sep + WATCHED
RACY_NS = 2_000_000_000  # a change this recent may share its mtime with the next one: look again
RATE_TAIL = 8192  # bytes read from the end of metrics.jsonl for the last images/s
PART_RUNS = 500  # a first scan with `part` hands over this many runs at a time (~0.2 s of reading)
FINAL_EVERY = 5  # finished runs' folders are stat'ed every this many looks (others at every look)


class LogTail(FileTail):
    """The end of train.log: each call reads only what was appended; a file that shrank or was replaced is
    read again from its end."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path, start_bytes=LOG_START_BYTES, max_pending=LOG_MAX_PENDING, missing=OSError)

    def read_new(self) -> list[str]:
        """Complete lines appended since the last call (the first call: the last ones)."""
        text = self.read_complete().decode("utf-8", errors="replace")
        # A progress bar redraws with carriage returns: keep what the terminal would show last.
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in lines]


class CsvTail(FileTail):
    """New complete rows of a prediction CSV since the last look (`rows`, under `header`). A file that
    shrank (a resume cut off a half-written line) or was replaced is read again from the start."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.header: list[str] | None = None
        self.rows: list[dict[str, str]] = []

    def read_new(self) -> int:
        """How many rows came."""
        resets = self.resets
        data = self.read_complete()
        if self.resets != resets:
            self.header, self.rows = None, []
        before = len(self.rows)
        for row in csv.reader(data.decode("utf-8", "replace").splitlines()):
            if self.header is None:
                self.header = row
            elif len(row) == len(self.header):
                self.rows.append(dict(zip(self.header, row)))
        return len(self.rows) - before

    def outputs(self) -> list[str]:
        """The probability columns: AU01_p … (AU runs) or <Class>_p (FER runs)."""
        return [c[:-2] for c in (self.header or []) if c.endswith("_p")]


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass
class RunUpdate:
    """What one look at a run folder found new: metric records, log lines and files that changed."""

    records: list[dict[str, Any]] = field(default_factory=list)  # new complete lines of metrics.jsonl
    metrics_reset: bool = False  # metrics.jsonl was replaced: drop what was kept, `records` is all of it
    log_lines: list[str] = field(default_factory=list)
    log_reset: bool = False
    files: dict[str, Any] = field(default_factory=dict)  # name -> new content (None: the file is gone)
    errors: dict[str, str] = field(default_factory=dict)  # name -> why it could not be read

    def __bool__(self) -> bool:
        return bool(self.records or self.metrics_reset or self.log_lines or self.log_reset or self.files
                    or self.errors)


class RunPoller:
    """`poll()` reads what is new in one run folder since the last call."""

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
            stamp = _stamp(os.path.join(self.run.path, name))
            if name in self._stamps and stamp == self._stamps[name]:
                continue
            self._stamps[name] = stamp
            try:
                update.files[name] = read() if stamp is not None else None
            except (FmaeError, OSError, ValueError) as e:
                # Files are replaced whole: it stays broken until it is written again (a new stamp).
                update.errors[name] = str(e).replace(f"{self.run.path}{os.sep}", "")
        return update


Changed = list[tuple[RunInfo, list[str], Optional[float]]]  # runs read again, with their tags and images/s
# (run folder, slim) -> (signature, what it gave): what one scanner read, for the process's other scanners
_SHARED: dict[tuple[str, bool], tuple[tuple, tuple[RunInfo, list[str], Optional[float]]]] = {}
_FIRST_LOOKS = threading.Lock()


class RunScanner:
    """`scan()` returns the runs that appeared or changed (with their tags and last images/s) and the ids
    that went away."""

    def __init__(self, runs_dir: Path, slim: bool = False, writes_index: bool = True,
                 extras_tag: str | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.slim = slim  # summaries without their per-AU tables (see slim_summary)
        # A slim first look reads the runs folder's index; one scanner of a process writes it (the app's
        # Runs screen), not a second one beside it (its alerts: 10 MB and 0.3 CPU-s at 10,000 runs again).
        self.writes_index = writes_index
        self._seen: dict[str, tuple | None] = {}  # run id -> signature (None: read it again next time)
        self.loads = 0  # run folders read so far, for tests and for the curious
        self.looks = 0
        self._finished: set[str] = set()  # runs last read in a final state (done, failed, cancelled)
        self.index_hits = 0  # runs a first look took from the runs folder's RunIndex
        self._now = 0  # the last listing's time (ns): a signature newer than RACY_NS before it is not trusted
        self._prefix = os.path.join(str(self.runs_dir), "")  # a run's key in _SHARED is this + its id
        self._index_due: Callable[[], None] | None = None  # the index a first look left to write (save=False)
        # The owner's JSON-able extra of a run (the Runs table's headline, made from the run as handed out),
        # kept in the index beside the run under `extras_tag` and given back with it: dropped here whenever
        # the run is handed out anew, so an extra found here is of the run as last handed out.
        self.extras: dict[str, Any] = {}
        self.extras_tag = extras_tag

    def _listing(self) -> list[os.DirEntry]:
        """The runs folder's entries but hidden ones (the index, the report's cache), as one look sees it."""
        try:
            entries = list(os.scandir(self.runs_dir))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        except OSError as e:  # as list_runs says it
            raise FmaeError(f"runs folder {self.runs_dir}: cannot list it: {e.strerror or e}") from None
        self._now = time.time_ns()
        self.looks += 1
        return [e for e in entries if e.name[0] != "."]

    def _signature(self, entry: os.DirEntry, indexed: list | None = None) -> tuple | None:
        """(folder mtime, inode, status.json's mtime, size, inode), or None when changed within RACY_NS of
        the listing. Flat, so that the index keeps it as one JSON list and a first look compares it without
        building tuples. OSError: the folder went. With the run's entry in the index (`indexed`), a finished
        run whose folder is as indexed keeps the indexed status.json part unchecked: the looks that check
        finished runs (every FINAL_EVERY-th) check it too, and at 100,000 runs its stat is 0.4 CPU-s of
        the first look."""
        st = entry.stat()
        newest = st.st_mtime_ns
        if indexed is not None and indexed[2] in FINAL_STATES:
            old = indexed[1]
            if type(old) is list and len(old) == 5 and old[0] == newest and old[1] == st.st_ino and all(
                    type(v) is int for v in old):
                return None if self._now - max(newest, old[2]) < RACY_NS else tuple(old)
        try:
            w = os.stat(entry.path + _WATCHED_PATH)
        except OSError:
            sig: tuple = (newest, st.st_ino, None, None, None)
        else:
            sig = (newest, st.st_ino, w.st_mtime_ns, w.st_size, w.st_ino)
            newest = max(newest, w.st_mtime_ns)
        return None if self._now - newest < RACY_NS else sig

    def scan(self, full: bool = False, part: Callable[[Changed], None] | None = None,
             part_size: int = PART_RUNS, save: bool = True) -> tuple[Changed, list[str]]:
        """(changed runs with their tags and images/s, ids of runs gone). The first scan, or `full`, reads
        every run, newest first, one folder at a time (a slim scanner never holds 10,000 whole summaries);
        with `part`, it hands them to `part` `part_size` at a time as they are read (a screen fills from
        the top while the rest are read) and returns only the ids gone. A slim first look writes the runs
        folder's index when it read a folder (0.2 CPU-s and 10 MB at 10,000 runs); `save=False` leaves it
        to `save_index()`, so a screen shows the look before it pays for that."""
        if not full and self._seen:
            return self._look_again()
        # Listed before reading: a change made while we read shows next time. Each folder is stat'ed as the
        # look reaches it, newest first (at 100,000 runs the stats take ~1 s: the top rows show before).
        signatures: dict[str, Any] = {}
        for entry in self._listing():
            try:
                if entry.is_dir():
                    signatures[entry.name] = entry
            except OSError:
                continue
        changed, present = [], set()
        # A second scanner's first look (the app's alerts beside the Runs screen) waits for the
        # first one's, then takes what it read instead of reading 10,000 folders again; `full` reads.
        size = FIRST_PART  # the first part small: the screen's top rows show at once
        index = RunIndex(self.runs_dir) if self.slim and not full else None
        if index is not None:
            index.extras_tag = self.extras_tag
        extras = self.extras
        opened = False
        kept: dict[str, tuple] = {}  # what the index will hold: runs read under a settled signature
        fresh = False  # a run read from its folder that the index can keep
        with _FIRST_LOOKS:
            for run_id in sorted(signatures, reverse=True):
                # What another scanner of the process read first (one copy in memory), under the signature
                # it read it at: not stat'ed again (at 100,000 runs a second first look would stat them
                # all, ~1 CPU-s); a later look compares it. Else the folder's own, and then the index.
                key = (self._prefix + run_id, self.slim)
                hit = _SHARED.get(key) if not full else None
                got = extra = None
                if hit is not None and hit[0] is not None:
                    sig, got = hit
                    signatures[run_id] = sig
                else:
                    if index is not None and not opened:
                        index.open()
                        opened = True
                    try:
                        sig = signatures[run_id] = self._signature(
                            signatures[run_id], index.peek(run_id) if index is not None else None)
                    except OSError:  # gone since the listing
                        del signatures[run_id]
                        continue
                    if index is not None:
                        got = index.get(run_id, sig)
                        if got is not None:
                            self.index_hits += 1
                            _SHARED[key] = (sig, got)
                            extra = index.extra
                if extra is None:
                    extras.pop(run_id, None)
                else:
                    extras[run_id] = extra
                if got is None:
                    got = self._read(run_id, sig, shared=False)
                    fresh = fresh or (got is not None and sig is not None)
                if got is not None:
                    changed.append(self._note(got))
                    present.add(run_id)
                    if sig is not None:
                        kept[run_id] = (sig, got)
                if part is not None and len(changed) >= size:
                    part(changed)
                    # then part_size, doubling: each part costs the screen a pass over what it holds
                    changed, size = [], part_size if size < part_size else min(2 * size, LAST_PART)
        if part is not None and changed:
            part(changed)
            changed = []
        if index is not None and opened:
            index.close()
            if self.writes_index and (fresh or index.stale or index.hits != len(kept)):
                self._index_due = functools.partial(index.save, kept, extras)
                if save:
                    self.save_index()
            else:
                index.release()
        removed = [run_id for run_id in self._seen if run_id not in present]
        self._forget(removed)
        self._seen = {run_id: signatures.get(run_id) for run_id in present}
        return changed, removed

    def _look_again(self) -> tuple[Changed, list[str]]:
        """A later look: a listing and a stat per run (a finished run's folder every FINAL_EVERY-th look: a
        retry or tags are rare), and only the runs whose signature moved read again. What the scanner
        holds is patched in place: at 100,000 runs a look that rebuilt it cost 0.36 s, every 2 s."""
        skip = self._finished if self.looks % FINAL_EVERY != FINAL_EVERY - 1 else ()
        seen, listed, changed = self._seen, set(), []
        for entry in self._listing():
            name = entry.name
            if name in skip and seen.get(name) is not None:
                listed.add(name)
                continue
            try:
                if not entry.is_dir():
                    continue
                sig = self._signature(entry)
            except OSError:
                continue
            if sig is not None and sig == seen.get(name, ()):
                listed.add(name)
                continue
            got = self._read(name, sig, shared=True)
            self.extras.pop(name, None)
            if got is not None:
                changed.append(self._note(got))
                listed.add(name)
                seen[name] = sig  # None (changed just now): read again next look
        removed = [run_id for run_id in seen if run_id not in listed]
        for run_id in removed:
            del seen[run_id]
        self._forget(removed)
        return changed, removed

    def _forget(self, removed: list[str]) -> None:
        for run_id in removed:
            _SHARED.pop((self._prefix + run_id, self.slim), None)
            self._finished.discard(run_id)
            self.extras.pop(run_id, None)

    @property
    def index_due(self) -> bool:
        """A first look with `save=False` left the runs folder's index to write."""
        return self._index_due is not None

    def save_index(self) -> None:
        due, self._index_due = self._index_due, None
        if due is not None:
            due()
            self.extras.clear()  # kept: 100,000 runs' extras are ~15 MiB not needed again

    def _read(self, run_id: str, sig: tuple | None, shared: bool) -> tuple[RunInfo, list[str], float | None] | None:
        """(info, tags, images/s) of one run folder: what another scanner of this process read under the
        same signature (`shared`), else read now; None for a folder that is not a run (yet)."""
        key = (self._prefix + run_id, self.slim)
        hit = self._shared(run_id, sig) if shared else None
        if hit is not None:
            return hit
        info = self._load(self.runs_dir / run_id)
        if info is None:
            _SHARED.pop(key, None)
            return None
        got = (info, _tags(info), last_rate(info.path))
        if sig is not None:
            _SHARED[key] = (sig, got)
        return got

    def _shared(self, run_id: str, sig: tuple | None) -> tuple[RunInfo, list[str], float | None] | None:
        hit = _SHARED.get((self._prefix + run_id, self.slim)) if sig is not None else None
        return hit[1] if hit is not None and hit[0] == sig else None

    def _note(self, got: tuple[RunInfo, list[str], float | None]) -> tuple[RunInfo, list[str], float | None]:
        (self._finished.add if got[0].state in FINAL_STATES else self._finished.discard)(got[0].id)
        return got

    def _load(self, path: Path) -> RunInfo | None:
        """One folder as list_runs reads it; None for a folder that is not a run (yet)."""
        try:
            names = set(os.listdir(path))
        except FileNotFoundError:
            return None
        except OSError as e:
            return RunInfo(path.name, path, "corrupt", {}, {}, None, f"unreadable: {e.strerror}")
        if not {"run.toml", "status.json"} & names:
            return None  # a name being claimed by RunDir.create, or a stray folder
        self.loads += 1
        info = load_run_info(path)
        return replace(info, summary=slim_summary(info.summary)) if self.slim else info


def _tags(info: RunInfo) -> list[str]:
    try:
        return RunDir(info.path).read_tags()
    except (OSError, ValueError):
        return []


def last_rate(path: Path) -> float | None:
    """The images/s of the last train record in metrics.jsonl (read from its end only), or None."""
    try:
        with open(path / "metrics.jsonl", "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - RATE_TAIL))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        if '"images_per_s"' not in line:
            continue
        try:
            value = json.loads(line).get("images_per_s")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
