"""The runs folder's index (`RunIndex`): what a slim `RunScanner` read of each run folder, kept under the
signature it was read at, so that the app's first look in a new process reads only the folders whose
signature moved; and `IndexedRun`, a run as the index gives it back. Torch-free."""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any, Iterator

from fmae.atomic_write import write_bytes_atomic
from fmae.runs import RunInfo, load_run

FIRST_PART = 50  # a first look hands over its first part at this many runs, doubling up to LAST_PART
LAST_PART = 8000
INDEX_NAME = ".runs-table.json"  # a slim scanner's first look in a new process starts from this
# 3: a signature is one flat list; 4: each run with its owner's extra; 5: the summary after a tab, as JSON
# text kept unparsed until read (3 and 4 are read, then written again in this form)
INDEX_VERSION = 5
_SLIM = "_fmae_slim"


def slim_summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a listing of runs keeps of a summary.json: its numbers and the best and last records' numbers,
    without the per-AU and per-class tables (~10 KB a run in memory, 100 MB at 10,000 runs)."""
    if not isinstance(summary, dict) or summary.get(_SLIM):
        return summary
    out = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    out[_SLIM] = True  # slimmed already: a second slim_summary hands it back as it is
    for key in ("best", "last"):
        record = summary.get(key)
        if isinstance(record, dict):
            out[key] = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
    return out


class IndexedRun(RunInfo):
    """A run as the runs index gives it back: its slim summary, kept as the index's JSON text, is parsed
    and its path made when first read. The Runs table reads neither for a row (its headline and filter
    text are the owner's extra), so a first look at 100,000 runs skips ~0.9 CPU-s and ~120 MiB. Otherwise
    a RunInfo (equal to one with the same fields; `dataclasses.replace` makes a whole one)."""

    @classmethod
    def lazy(cls, run_id: str, runs_dir: Path, state: str, config: dict, status: dict, summary_text: bytes,
             problem: str | None) -> IndexedRun:
        run = cls.__new__(cls)  # not the dataclass's __init__: path and summary are left to __getattr__
        run.__dict__.update(id=run_id, state=state, config=config, status=status, problem=problem,
                            _runs_dir=runs_dir, _summary_text=summary_text)
        return run

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if name == "path" and "_runs_dir" in d:
            value: Any = d["_runs_dir"] / d["id"]
        elif name == "summary" and ("_summary_text" in d or "summary" in d):
            text = d.get("_summary_text")
            if text is None:  # parsed by another thread since this one missed it
                return d["summary"]
            try:
                value = json.loads(text)
                if value is not None and not isinstance(value, dict):
                    raise ValueError("not an object")
            except ValueError:  # a damaged index: the folder is the truth
                value = slim_summary(load_run(self.path).summary)
            d["summary"] = value  # before the text goes: a thread that finds no text finds this
            d.pop("_summary_text", None)
            return value
        else:
            raise AttributeError(name)
        d[name] = value
        return value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunInfo):
            return NotImplemented
        return (self.id, self.path, self.state, self.config, self.status, self.summary, self.problem) == (
            other.id, other.path, other.state, other.config, other.status, other.summary, other.problem)

    __hash__ = None  # type: ignore[assignment]  # as RunInfo's: mutable


def summary_text(info: RunInfo, encode: Any = json.JSONEncoder(separators=(",", ":")).encode) -> bytes:
    """The run's summary as the index keeps it: an IndexedRun's text as it was read, unparsed."""
    text = info.__dict__.get("_summary_text")
    return text if text is not None else encode(info.summary).encode()


class RunIndex:
    """What a slim scanner read of each run folder (info with a slim summary, tags, images/s), kept in the
    runs folder under the signature it was read at, so that the app's first look in a new process reads
    only the folders whose signature moved: at 10,000 runs, one JSON file instead of 30,000 files and a
    TOML parse each (~3 s). One line a run, newest first as a first look goes (a JSON array, a tab, the
    summary's JSON), so the look reads the index as it goes and the first rows show before the rest of
    the file is parsed. The folders stay the truth: a missing, damaged or other release's index only
    costs one slow look, and an entry is trusted exactly as far as the scanner trusts its own memory
    between looks (every file that can change is replaced atomically, moving the folder's mtime)."""

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
        self._version = INDEX_VERSION
        # What a save copies as it was read: run id -> (what `get` gave, its extra, the line's offset and
        # length), read again through `_fd`, the index as it was opened (a rename over it leaves it be).
        self._taken: dict[str, tuple[tuple, Any, int, int]] = {}
        self._fd: int | None = None
        self._closer: Any = None  # closes _fd once: at `release`, or when the index is dropped unsaved
        self._offset = 0  # where the next line read starts

    def open(self) -> None:
        try:
            self._lines = open(self.path, "rb")
            line = self._lines.readline()
            self._offset = len(line)
            header = json.loads(line)
            version = header.get("fmae_runs_table") if isinstance(header, dict) else None
            if version not in (3, 4, INDEX_VERSION):
                raise ValueError("another release's index")
            self._version = version
            self.stale = version != INDEX_VERSION  # an older one is read as it is, then written in this form
            self._extras_match = self.extras_tag is not None and header.get("extras") == self.extras_tag
            if self.extras_tag is not None and not self._extras_match:
                self.stale = True  # written again with this owner's extras
            if version == INDEX_VERSION and self._extras_match:
                self._fd = os.dup(self._lines.fileno())
                self._closer = weakref.finalize(self, os.close, self._fd)
        except (OSError, ValueError):
            self.close(stale=True)
            return
        self._advance()

    def _parse(self, lines: list[bytes]) -> list[list]:
        """A chunk of lines as entries [id, sig, state, config, status, problem, tags, rate, extra, summary
        text]; ValueError for one that is not an entry. (The line's offset and length are added after.)"""
        # One array a chunk: one parse shares the key strings of its runs' dicts (a line at a time made
        # every run's keys anew: +40 MiB at 10,000 runs).
        if self._version == INDEX_VERSION:
            heads, texts = [], []
            for line in lines:
                head, tab, text = line.partition(b"\t")
                text = text.rstrip()
                if not tab or not text:
                    raise ValueError("not an entry")
                heads.append(head)
                texts.append(text)
            entries = json.loads(b"[" + b",".join(heads) + b"]")
            if not all(isinstance(e, list) and len(e) == 9 and isinstance(e[0], str) for e in entries):
                raise ValueError("not an entry")
            for entry, text in zip(entries, texts):
                entry.append(text)
            return entries
        size = 9 if self._version == 3 else 10  # [id, sig, state, config, status, summary, problem, tags, rate(, extra)]
        old = json.loads(b"[" + b",".join(lines) + b"]")
        if not all(isinstance(e, list) and len(e) == size and isinstance(e[0], str) for e in old):
            raise ValueError("not an entry")
        encode = json.JSONEncoder(separators=(",", ":")).encode
        return [[*e[:5], *e[6:9], e[9] if size == 10 else None, encode(e[5]).encode()] for e in old]

    def _advance(self) -> None:
        self._next = None
        if not self._ahead and self._lines is not None:
            lines, spans, offset, readline = [], [], self._offset, self._lines.readline
            for _ in range(self._chunk):
                line = readline()
                if line.strip():
                    lines.append(line)
                    spans.append((offset, len(line)))
                offset += len(line)
            self._offset = offset
            self._chunk = min(2 * self._chunk, LAST_PART)  # chunks double
            try:
                entries = self._parse(lines)
                for entry, span in zip(entries, spans):
                    entry += span
                self._ahead = entries[::-1]
            except ValueError:
                self.close(stale=True)
                return
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

    def peek(self, run_id: str) -> list | None:
        """The run's entry (see _parse), left for `get`, or None. Asked newest first: entries passed over
        are of runs gone."""
        while self._next is not None and self._next[0] > run_id:
            self.stale = True
            self._advance()
        entry = self._next
        return entry if entry is not None and entry[0] == run_id else None

    def get(self, run_id: str, sig: tuple | None) -> tuple[RunInfo, list[str], float | None] | None:
        """The run as it was read under `sig`, or None (not indexed, read under another, damaged)."""
        entry = self.peek(run_id)
        if entry is None:
            return None
        self._advance()
        _, old_sig, state, config, status, problem, tags, rate, extra, text, offset, length = entry
        self.extra = extra if self._extras_match else None
        if sig is None or not isinstance(old_sig, list) or tuple(old_sig) != sig or not (
                isinstance(config, dict) and isinstance(status, dict) and isinstance(tags, list)):
            return None
        self.hits += 1
        got = IndexedRun.lazy(run_id, self.runs_dir, state, config, status, text, problem), tags, rate
        if self._fd is not None:
            self._taken[run_id] = (got, extra, offset, length)
        return got

    def release(self) -> None:
        """Let go of the index as it was opened (a save does, after copying from it)."""
        closer, self._closer, self._fd, self._taken = self._closer, None, None, {}
        if closer is not None:
            closer()

    def save(self, got: dict[str, tuple[tuple, tuple[RunInfo, list[str], float | None]]],
             extras: dict[str, Any] | None = None) -> None:
        """Every run of a look (id -> (signature, what it gave), newest first), each with its owner's
        extra (`extras`, under `extras_tag`); a read-only runs folder keeps none. A run the index gave,
        with the extra it gave, is copied as it was read (one changed run of 100,000 rewrote the whole
        index, 1.3 CPU-s, as the user began to type)."""
        extra = (extras or {}).get
        fd, taken = self._fd, self._taken

        def lines() -> Iterator[bytes]:  # one at a time: the whole index is never a string in memory
            yield json.dumps({"fmae_runs_table": INDEX_VERSION, "extras": self.extras_tag}).encode() + b"\n"
            encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps makes one a call
            for run_id, (sig, gave) in got.items():
                was = taken.get(run_id)
                if fd is not None and was is not None and was[0] is gave and was[1] is extra(run_id):
                    line = os.pread(fd, was[3], was[2])
                    if len(line) == was[3] and line.endswith(b"\n"):
                        yield line
                        continue
                info, tags, rate = gave
                head = encode([run_id, sig, info.state, info.config, info.status, info.problem, tags, rate,
                               extra(run_id)])
                yield b"".join((head.encode(), b"\t", summary_text(info, encode), b"\n"))

        try:
            write_bytes_atomic(self.path, lines())
        except (OSError, TypeError, ValueError):
            pass  # the look was right; only the next process's first look is slower
        finally:
            self.release()
