"""`list_runs` without re-reading unchanged folders: what each run folder gave, cached by file stamps.

`fmae report` is a new process each time, and reading 10,000 run folders (a TOML parse of each run.toml,
status.json, summary.json) took ~10 s on a quiet 2-core machine. The cache is one JSON file in the runs
folder, `.run-cache.json` (hidden: `list_runs` and the app skip it), written atomically, holding each
run's `RunInfo` beside the stamps it was read under: the run folder's and its three files' (inode,
mtime, size). A run whose stamps match is taken from the cache; any other is read with `runs.load_run`,
as `list_runs` reads it. The folders stay the truth: deleting the cache only costs one slow listing.

Stamps are taken before the files are read, so a change during the read shows as a stale stamp next
time, never as a stale entry; a file changed within the last `RECENT_S` seconds is not cached at all
(a filesystem's clock ticks coarser than its nanoseconds: two writes within one tick can share an
mtime), so a running run, whose status.json beats every few seconds, is read afresh each time.
A runs folder the user cannot write still lists (read, not cached). No torch: the app may import this.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from fmae.atomic_write import write_text_atomic
from fmae.runs import RunInfo, load_run, run_folder_entries

CACHE_NAME = ".run-cache.json"
VERSION = 1
RECENT_S = 2.0
_FILES = ("run.toml", "status.json", "summary.json")


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size, int(stat.S_ISREG(st.st_mode))]


def _stamps(folder: str) -> list[list[int] | None]:
    """The folder's stamp, then each file's (None where it is missing)."""
    return [_stamp(folder), *(_stamp(os.path.join(folder, name)) for name in _FILES)]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("fmae_run_cache") != VERSION or not isinstance(data.get("runs"), dict):
        return {}
    return data["runs"]


def _entry(info: RunInfo, stamps: list) -> dict[str, Any]:
    return {"stamps": stamps, "state": info.state, "config": info.config, "status": info.status,
            "summary": info.summary, "problem": info.problem}


def _info(run_id: str, path: Path, e: dict[str, Any]) -> RunInfo:
    return RunInfo(run_id, path, e["state"], e["config"], e["status"], e["summary"], e["problem"])


def cached_list_runs(runs_dir: Path) -> list[RunInfo]:
    """What `runs.list_runs(runs_dir)` returns, reading only the run folders that changed since the last
    call (of any process); the cache file is rewritten when anything changed."""
    runs_dir = Path(runs_dir)
    entries = run_folder_entries(runs_dir)
    cache_path = runs_dir / CACHE_NAME
    old = _read_cache(cache_path)
    new: dict[str, Any] = {}
    out: list[RunInfo] = []
    changed = False
    recent = (time.time() - RECENT_S) * 1e9
    for entry in entries:
        stamps = _stamps(entry.path)
        path = Path(entry.path)
        cached = old.get(entry.name)
        if cached is not None and cached.get("stamps") == stamps:
            out.append(_info(entry.name, path, cached))
            new[entry.name] = cached
            continue
        try:  # from here on exactly as list_runs reads a folder
            names = set(os.listdir(entry.path))
        except OSError as e:
            out.append(RunInfo(entry.name, path, "corrupt", {}, {}, None, f"unreadable: {e.strerror}"))
            continue
        if not {"run.toml", "status.json"} & names:
            continue
        info = load_run(path)
        out.append(info)
        if all(s is None or s[1] < recent for s in stamps):
            new[entry.name] = _entry(info, stamps)
            changed = True
    if changed or new.keys() != old.keys():  # a run read afresh and cacheable, or one gone
        _write_cache(cache_path, new)
    return sorted(out, key=lambda r: r.id)


def _write_cache(path: Path, runs: dict[str, Any]) -> None:
    try:
        text = json.dumps({"fmae_run_cache": VERSION, "runs": runs}, separators=(",", ":"), allow_nan=True)
        write_text_atomic(path, text)
    except (OSError, TypeError, ValueError):
        pass  # a read-only or full runs folder: the listing is right, only the next one is slower
