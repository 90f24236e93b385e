"""The run folders as `fmae report` reads them, without re-reading unchanged folders: slim records
cached by file stamps.

`fmae report` is a new process each time, and reading 10,000 run folders (a TOML parse of each run.toml,
status.json, summary.json) took ~10 s on a quiet 2-core machine. The cache is one JSON file in the runs
folder, `.run-cache.json` (hidden: `list_runs` and the app skip it), written atomically, holding each
run's slim record beside the stamps it was read under: the run folder's and its three files' (inode,
mtime, size). A run whose stamps match is taken from the cache; any other is read with `runs.load_run`,
as `list_runs` reads it, and slimmed. The folders stay the truth: deleting the cache only costs one slow
listing.

Slim, because parsing the cache is the warm report's main cost (45 MiB of whole records took ~2 s to
parse at 10,000 runs): a record keeps the config whole (any key can be a `--by` group or a grid's
difference), from summary.json only what the report scores (`REPORT_KEYS` of the best and last
records, the top-level `degenerate` flag), and none of status.json but its state. Configs are stored
as differences from a few shared bases, since runs of one study differ in a handful of keys.

Stamps are taken before the files are read, so a change during the read shows as a stale stamp next
time, never as a stale entry; a file changed within the last `RECENT_S` seconds is not cached at all
(a filesystem's clock ticks coarser than its nanoseconds: two writes within one tick can share an
mtime), so a running run, whose status.json beats every few seconds, is read afresh each time.
A runs folder the user cannot write still lists (read, not cached). No torch: the app may import this.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fmae.atomic_write import write_text_atomic
from fmae.metric_catalogue import REPORT_METRICS
from fmae.runs import RunInfo, load_run, run_folder_entries

CACHE_NAME = ".run-cache.json"
VERSION = 2
RECENT_S = 2.0
_FILES = ("run.toml", "status.json", "summary.json")
# What the report reads of a best / last record: the per-AU numbers it can score, FER's and the probe's
# accuracy, the epoch, and what says a run is degenerate.
REPORT_KEYS = frozenset({"epoch", "accuracy", "best_threshold", "degenerate",
                         *(m.per_au or m.key for m in REPORT_METRICS.values())})
_NO_STAMP = (0, 0, 0, 0)


def _stamps(folder: str) -> list[int]:
    """The folder's (inode, mtime, size, is a file), then each file's (zeros where it is missing), flat."""
    out: list[int] = []
    for path in (folder, *(os.path.join(folder, name) for name in _FILES)):
        try:
            st = os.stat(path)
        except OSError:
            out += _NO_STAMP
            continue
        out += (st.st_ino, st.st_mtime_ns, st.st_size, int(st.st_mode & 0o170000 == 0o100000))
    return out


def slim(info: RunInfo) -> RunInfo:
    """What the report reads of a run: its config whole, its summary's `REPORT_KEYS`, no status."""
    summary = info.summary
    if isinstance(summary, dict):
        kept: dict[str, Any] = {k: summary[k] for k in ("degenerate",) if k in summary}
        for name in ("best", "last"):
            record = summary.get(name)
            if isinstance(record, dict):
                kept[name] = {k: v for k, v in record.items() if k in REPORT_KEYS}
            elif name in summary:
                kept[name] = record  # not an object: the report says so as it would of the file
        summary = kept
    status = {"state": info.status["state"]} if "state" in info.status else {}  # the report reads no more
    return RunInfo(info.id, info.path, info.state, info.config, status, summary, info.problem)


def _same(a: Any, b: Any) -> bool:
    """Equal and of one type (1, 1.0 and True are three values in a config)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (dict, list)):
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return a == b or (a != a and b != b)  # NaN is a value too


class _Bases:
    """Configs as a difference from a shared base (the first config seen with the same keys)."""

    def __init__(self, bases: list[dict[str, Any]] | None = None) -> None:
        self.bases = bases if bases is not None else []
        self._by_keys = {tuple(b): i for i, b in enumerate(self.bases)}

    def split(self, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        keys = tuple(config)
        i = self._by_keys.get(keys)
        if i is None:
            i = self._by_keys[keys] = len(self.bases)
            self.bases.append(config)
        base = self.bases[i]
        return i, {k: v for k, v in config.items() if not _same(v, base[k])}


def _read_cache(path: Path) -> tuple[list[dict[str, Any]], dict[str, list]]:
    try:
        data = json.loads(path.read_bytes())
        if data.get("fmae_run_cache") == VERSION:
            bases, runs = data["configs"], data["runs"]
            if isinstance(bases, list) and all(isinstance(b, dict) for b in bases) and isinstance(runs, dict):
                return bases, runs
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    return [], {}  # none yet, unreadable, or another release's: rebuilt from the folders


def cached_list_runs(runs_dir: Path) -> list[RunInfo]:
    """What `[slim(i) for i in runs.list_runs(runs_dir)]` returns, reading only the run folders that
    changed since the last call (of any process); the cache file is rewritten when anything changed."""
    runs_dir = Path(runs_dir)
    entries = run_folder_entries(runs_dir)
    cache_path = runs_dir / CACHE_NAME
    old_bases, old = _read_cache(cache_path)
    bases = _Bases(list(old_bases))  # an unchanged run's entry is kept as it is, with its base's index
    new: dict[str, list] = {}
    out: list[RunInfo] = []
    changed = False
    recent = (time.time() - RECENT_S) * 1e9
    for entry in entries:
        stamps = _stamps(entry.path)
        path = Path(entry.path)
        cached = old.get(entry.name)
        if cached is not None:
            try:
                st, state, base, diff, status_state, summary, problem = cached
                if st == stamps:
                    # the keys in the base's order, which is the config's (a base has the same keys)
                    out.append(RunInfo(entry.name, path, state, {**old_bases[base], **diff},
                                       {} if status_state is None else {"state": status_state}, summary, problem))
                    new[entry.name] = cached
                    continue
            except (TypeError, ValueError, IndexError, KeyError):
                pass  # a damaged entry: the folder is read
        try:  # from here on exactly as list_runs reads a folder
            names = set(os.listdir(entry.path))
        except OSError as e:
            out.append(RunInfo(entry.name, path, "corrupt", {}, {}, None, f"unreadable: {e.strerror}"))
            continue
        if not {"run.toml", "status.json"} & names:
            continue
        info = slim(load_run(path))
        out.append(info)
        if all(stamps[i + 1] < recent for i in range(0, len(stamps), 4)):
            new[entry.name] = [stamps, info.state, *bases.split(info.config), info.status.get("state"),
                               info.summary, info.problem]
            changed = True
    if changed or new.keys() != old.keys():  # a run read afresh and cacheable, or one gone
        _write_cache(cache_path, bases.bases, new)
    return sorted(out, key=lambda r: r.id)


def _write_cache(path: Path, bases: list[dict[str, Any]], runs: dict[str, list]) -> None:
    used = sorted({entry[2] for entry in runs.values()})  # the bases of runs since removed go
    if len(used) < len(bases):
        index = {old: i for i, old in enumerate(used)}
        bases = [bases[i] for i in used]
        runs = {name: [*e[:2], index[e[2]], *e[3:]] for name, e in runs.items()}
    try:
        text = json.dumps({"fmae_run_cache": VERSION, "configs": bases, "runs": runs}, separators=(",", ":"),
                          allow_nan=True)
        write_text_atomic(path, text)
    except (OSError, TypeError, ValueError):
        pass  # a read-only or full runs folder: the listing is right, only the next one is slower
