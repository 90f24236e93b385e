"""Which runs changed since the last look, found cheaply enough to ask every two seconds of 1,000 runs.

Every file of the run folder that can change (status.json, summary.json, tags, notes.md) is replaced
atomically, so a change renames a file into the folder and moves the folder's mtime: one listing of
the runs folder plus a few stats a run tell what to re-read, and only those runs are read again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fmae.runs import RunDir, RunInfo, list_runs
from fmae.runs import load_run as load_run_info

WATCHED = ("status.json",)  # also stat'ed: a writer that edits it in place (not by the contract) still shows
RACY_NS = 2_000_000_000  # a change this recent may share its mtime with the next one: look again
RATE_TAIL = 8192  # bytes read from the end of metrics.jsonl for the last images/s


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class RunScanner:
    """`scan()` returns the runs that appeared or changed (with their tags and last images/s) and the ids
    that went away."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self._seen: dict[str, tuple | None] = {}  # run id -> signature (None: read it again next time)
        self.loads = 0  # run folders read so far, for tests and for the curious

    def _signatures(self) -> dict[str, tuple | None]:
        try:
            entries = list(os.scandir(self.runs_dir))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        now = time.time_ns()
        out: dict[str, tuple | None] = {}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_dir():
                    continue
                st = entry.stat()
            except OSError:
                continue
            sig = ((st.st_mtime_ns, st.st_ino),) + tuple(_stamp(os.path.join(entry.path, n)) for n in WATCHED)
            newest = max(s[0] for s in sig if s is not None)
            out[entry.name] = None if now - newest < RACY_NS else sig
        return out

    def scan(self, full: bool = False) -> tuple[list[tuple[RunInfo, list[str], float | None]], list[str]]:
        """(changed runs with their tags and images/s, ids of runs gone). The first scan, or `full`, reads
        every run."""
        first = full or not self._seen
        signatures = self._signatures()  # before reading: a change made while we read shows next time
        if first:
            infos = list_runs(self.runs_dir)
            self.loads += len(infos)
            changed = [(info, _tags(info), last_rate(info.path)) for info in infos]
            present = {info.id for info in infos}
        else:
            changed, present = [], set()
            for run_id, sig in signatures.items():
                old = self._seen.get(run_id, ())
                if sig is not None and sig == old:
                    present.add(run_id)
                    continue
                info = self._load(self.runs_dir / run_id)
                if info is not None:
                    changed.append((info, _tags(info), last_rate(info.path)))
                    present.add(run_id)
        removed = [run_id for run_id in self._seen if run_id not in present]
        self._seen = {run_id: signatures.get(run_id) for run_id in present}
        return changed, removed

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
        return load_run_info(path)


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
