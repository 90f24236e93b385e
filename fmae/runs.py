"""The run folder `runs/<run_id>/` (a **contract**, see docs/run_folder.md): create, status, metrics, listing.

The trainer writes it, the queue and scheduler update its status, the app and scripts read it; the
folder is the truth. Files are replaced atomically or appended by whole lines: readers never see half.
No torch here: the app imports this module and must start instantly (stdlib + tomlkit only).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import tomlkit
from tomlkit.exceptions import TOMLKitError

from fmae.atomic_write import write_text_atomic
from fmae.errors import FmaeError
from fmae.file_tail import FileTail

try:
    import tomllib
except ImportError:  # Python 3.10: tomlkit parses the same documents, only slower
    tomllib = None  # type: ignore[assignment]
try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; the engine targets Linux
    fcntl = None  # type: ignore[assignment]

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # built from checked names, so longer than one


def check_name(name: str, what: str = "run name") -> str:
    """`name` if it is safe as (part of) a folder name, else FmaeError with a one-line message."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise FmaeError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (no path separators), "
                        "starting with a letter or digit, at most 80 characters")
    return name


def _compact(x: float) -> str:
    # 2.0 -> "2", 0.5 -> "0.5", 1e-5 -> "0.00001": readable, and never an exponent with a '-' in it.
    return (f"{float(x):.10f}".rstrip("0").rstrip(".")) or "0"


def make_run_id(dataset: str, model: str, seed: int, *, task: str = "train", fold: int | None = None,
                lambda_id: float | None = None, name: str | None = None, now: datetime | None = None) -> str:
    """`YYYYMMDD-HHMMSS[-task]-dataset[-fN]-sN[-lλ]-model[-name]-xxxx`: sorts by creation time (UTC; a
    naive `now` is taken as UTC); the 4 random hex digits keep runs made in the same second apart."""
    when = now or datetime.now(timezone.utc)
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    parts = [when.strftime("%Y%m%d-%H%M%S")]
    if task != "train":
        parts.append(check_name(task, "task"))
    parts.append(check_name(dataset, "dataset"))
    if fold is not None:
        parts.append(f"f{int(fold)}")
    parts.append(f"s{int(seed)}")
    if lambda_id is not None:
        if not math.isfinite(float(lambda_id)) or float(lambda_id) < 0:
            raise FmaeError(f"lambda_id = {lambda_id}: must be a finite number >= 0")
        parts.append(f"l{_compact(lambda_id)}")
    parts.append(check_name(model, "model"))
    if name is not None:
        parts.append(check_name(name))
    parts.append(secrets.token_hex(2))
    return "-".join(parts)


def utc_now() -> str:
    """ISO-8601 UTC with milliseconds and 'Z': "2026-11-28T04:12:33.120Z" (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(stamp: Any) -> float | None:
    """Unix seconds from a `utc_now` stamp (status.json's times); None when absent or unreadable."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def one_line(text: object, limit: int | None = 300) -> str:
    """Whitespace runs (newlines included) squeezed to one space, cut to `limit` characters (None: uncut)."""
    s = " ".join(str(text).split())
    return s if limit is None or len(s) <= limit else s[: limit - 1] + "…"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (signal 0); one owned by another user counts as alive.
    A zombie (exited, not yet reaped by its parent) is dead: under a PID 1 that never reaps, it stays
    one for ever, and its run has ended."""
    if pid <= 0:  # 0 and negatives address process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError) as e:
        if isinstance(e, ProcessLookupError):
            return False
    return _proc_state(pid) not in ("Z", "X")  # it exists (ours or another user's to signal)


def _proc_state(pid: int) -> str | None:
    """The one-letter state of /proc/<pid>/stat (R, S, D, T, Z, X…), or None where there is no /proc."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) S …": comm may hold spaces and parentheses, so the state follows the LAST ')'.
    rest = stat[stat.rfind(b")") + 1:].split()
    return rest[0].decode("ascii", "replace") if rest else None


def _tomlable(value: Any, where: str) -> Any:
    # TOML has no null: None values in a table are left out (a reader's .get() gives None back).
    # Tuples and paths are written as lists and strings; nested dicts become sub-tables.
    if isinstance(value, (bool, int, float, str, os.PathLike)):
        return os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(value, dict):
        return {str(k): _tomlable(v, f"{where}.{k}") for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)) and all(v is not None for v in value):
        return [_tomlable(v, where) for v in value]
    raise TypeError(f"{where}: {type(value).__name__} {value!r:.60} cannot be written to run.toml")


def plain_json(value: Any) -> Any:
    """`value` as JSON can hold it (run files, the report's JSON export)."""
    # JSON has no NaN/inf: they become null, so every line stays valid JSON for every reader.
    # Objects with .item() (numpy scalars) become Python numbers without importing numpy.
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if not isinstance(value, (str, int, type(None))) and callable(getattr(value, "item", None)):
        return plain_json(value.item())
    return value


def _dumps(value: Any, indent: int | None = 1) -> str:
    # ASCII output: no raw U+2028 or control characters that a line-splitting reader could trip on.
    return json.dumps(plain_json(value), allow_nan=False, indent=indent) + ("\n" if indent is not None else "")


def _read_json(path: Path, fix: str = "") -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
        raise FmaeError(f"{path}: not valid JSON: {one_line(e, 120)}{fix}") from None


# fmae replaces these files atomically, so a damaged one was changed outside fmae: say what to do.
_STATUS_FIX = (" — fmae never leaves it half-written, so it was changed elsewhere: restore it, or replace it "
               'with {"state": "failed"} to retry the run')
_RUNS_FIX = " — make it a folder this user can write to, or choose another (runs_dir in fmae.toml, --runs-dir)"
_SUMMARY_FIX = " — it is rewritten at the run's next evaluation; delete it to clear this"


def _member(name: str, doc: str | None = None) -> property:
    return property(lambda self: self.path / name, doc=doc or f"Path of {name} in the run folder.")


class RunDir:
    """One run folder. Paths are properties; reads and writes follow the contract."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._tail_checked = False  # append_metrics has looked for a cut last line (see there)

    @classmethod
    def create(cls, runs_dir: Path, run_id: str, config: dict[str, Any], provenance: dict[str, Any]) -> RunDir:
        """A new folder `runs_dir/run_id` with run.toml and status.json (state queued)."""
        runs_dir = Path(runs_dir)
        if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
            raise FmaeError(f"run id '{one_line(run_id, 120)}': use letters, digits, '.', '_' or '-' only")
        # Serialised before touching the disk: a bad value leaves nothing behind.
        text = tomlkit.dumps({"config": _tomlable(config, "config"), "provenance": _tomlable(provenance, "provenance")})
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
            root = runs_dir.resolve()
        except OSError as e:
            raise FmaeError(f"runs folder {runs_dir} is not a writable folder: {e.strerror or e}{_RUNS_FIX}") from None
        final = root / run_id
        if final.resolve().parent != root:  # the regex already forbids this; the check is the guarantee
            raise FmaeError(f"run id '{run_id}' would leave the runs folder {root}")
        # Claim the name (fails if it exists), fill a hidden twin, then rename it over the empty claim:
        # a lister sees either an empty folder (skipped) or a complete run, never half of one.
        try:
            final.mkdir()
        except FileExistsError:
            raise FmaeError(f"{runs_dir / run_id}: a run with this id already exists") from None
        except OSError as e:
            raise FmaeError(f"runs folder {runs_dir} is not writable: {e.strerror or e}{_RUNS_FIX}") from None
        staging = root / f".{run_id}.creating"
        try:
            shutil.rmtree(staging, ignore_errors=True)  # a crashed attempt's leftovers; the claim makes it ours
            staging.mkdir()
            write_text_atomic(staging / "run.toml", text)
            stamp = dict.fromkeys(("created", "updated"), utc_now())
            write_text_atomic(staging / "status.json", _dumps({"state": "queued", **stamp}))
            os.replace(staging, final)
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                final.rmdir()
            if isinstance(e, OSError):
                raise FmaeError(f"runs folder {runs_dir} is not writable: {e.strerror or e}{_RUNS_FIX}") from None
            raise
        return cls(runs_dir / run_id)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """An existing run folder; FmaeError unless it is a folder holding run.toml."""
        p = Path(path)
        if not p.is_dir():
            raise FmaeError(f"{p} is not a run folder ({'not a folder' if p.exists() else 'no such folder'}) — "
                            "pass a folder under the runs folder, e.g. runs/<run id>")
        if not (p / "run.toml").is_file():
            raise FmaeError(f"{p} is not a run folder (no run.toml) — pass the run's own folder, the one "
                            "holding run.toml")
        return cls(p)

    # --- paths -----------------------------------------------------------------------------------
    id = property(lambda self: self.path.name, doc="The run id (the folder's name).")
    run_toml = _member("run.toml")
    status_path = _member("status.json")
    metrics_path = _member("metrics.jsonl")
    summary_path = _member("summary.json")
    log_path = _member("train.log")
    checkpoints = _member("checkpoints", "Folder of last.pt and best.pt (the trainer makes it when it saves).")
    predictions = _member("predictions", "Folder of the best epoch's test-set outputs (npz).")
    notes_path = _member("notes.md")
    tags_path = _member("tags")

    # --- run.toml ----------------------------------------------------------------------------------
    def _read_toml(self) -> dict[str, Any]:
        try:
            text = self.run_toml.read_text(encoding="utf-8")
            # tomllib gives plain dicts and is fast (list_runs reads every run.toml on each refresh).
            return tomllib.loads(text) if tomllib is not None else tomlkit.parse(text).unwrap()
        except (ValueError, TOMLKitError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            raise FmaeError(f"{self.run_toml}: not valid TOML: {one_line(e, 120)} — fmae writes it once and never "
                            "half, so it was changed elsewhere: restore it from a copy of the run") from None

    def _table(self, name: str) -> dict[str, Any]:
        table = self._read_toml().get(name, {})
        if not isinstance(table, dict):
            raise FmaeError(f"{self.run_toml}: '{name}' must be a table ([{name}])")
        return table

    def read_config(self) -> dict[str, Any]:
        """The resolved config as one flat mapping (a sectioned [config] and the flat one of earlier
        releases read alike: `run_spec.flatten`); keys whose value was None are absent."""
        from fmae.run_spec import flatten

        return flatten(self._table("config"))

    def read_provenance(self) -> dict[str, Any]:
        return self._table("provenance")

    # --- status.json -------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        if not self.status_path.exists():
            raise FmaeError(f"{self.status_path}: missing (the run folder is incomplete)")
        status = _read_json(self.status_path, _STATUS_FIX)
        if not isinstance(status, dict):
            raise FmaeError(f"{self.status_path}: expected a JSON object{_STATUS_FIX}")
        return status

    @contextlib.contextmanager
    def _status_lock(self) -> Iterator[None]:
        # The scheduler and the trainer both update status.json: an exclusive flock on a sidecar file
        # (never replaced, unlike status.json itself) serialises their read-modify-write cycles.
        fd = os.open(self.path / ".status.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into status.json under the lock (None deletes a key); returns the new status."""
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"state {fields['state']!r}: expected one of {', '.join(STATES)}")
        with self._status_lock():
            old = self.read_status() if self.status_path.exists() else {}
            status = {k: v for k, v in {**old, **fields, "updated": utc_now()}.items() if v is not None}
            write_text_atomic(self.status_path, _dumps(status))
        return status

    def mark_running(self, pid: int, pgid: int | None = None, host: str | None = None,
                     gpus: str | list[Any] | None = None) -> dict[str, Any]:
        """state running; clears what a previous attempt left (ended, exit_code, error)."""
        if isinstance(gpus, str):  # CUDA_VISIBLE_DEVICES: "0,1", "" on CPU, or GPU UUIDs; stored as a list
            gpus = [int(g) if g.isdigit() else g for g in map(str.strip, gpus.split(",")) if g]
        now = utc_now()
        return self.update_status(state="running", pid=int(pid), pgid=None if pgid is None else int(pgid),
                                  host=host, gpus=gpus, started=now, heartbeat=now,
                                  ended=None, exit_code=None, error=None)

    def heartbeat(self, epoch: int | None = None, step: int | None = None, total_steps: int | None = None,
                  epochs: int | None = None) -> dict[str, Any]:
        """Proof of life plus progress; fields left None keep their last value."""
        fields = {"epoch": epoch, "step": step, "total_steps": total_steps, "epochs": epochs}
        return self.update_status(heartbeat=utc_now(), **{k: int(v) for k, v in fields.items() if v is not None})

    def mark_ended(self, state: str, exit_code: int | None = None, error: str | None = None) -> dict[str, Any]:
        """A final state; `error` is squeezed to one line of at most 300 characters."""
        if state not in FINAL_STATES:
            raise ValueError(f"state {state!r}: a run ends {', '.join(FINAL_STATES)}")
        return self.update_status(state=state, ended=utc_now(), exit_code=exit_code,
                                  error=None if error is None else one_line(error))

    def mark_queued(self) -> dict[str, Any]:
        """Retry: back to queued, forgetting the last attempt's process and outcome (progress stays)."""
        return self.update_status(state="queued", pid=None, pgid=None, host=None, gpus=None, started=None,
                                  heartbeat=None, ended=None, exit_code=None, error=None)

    # --- metrics.jsonl and summary.json -----------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line, written with one write() in append mode (no fsync: this is a log)."""
        rec = dict(record)
        rec.setdefault("t", time.time())
        data = (_dumps(rec, indent=None) + "\n").encode("utf-8")
        # Unbuffered O_APPEND: the line goes to the kernel in one call, so a tailing reader sees it whole
        # or not at all, and concurrent appenders cannot interleave within a line.
        with open(self.metrics_path, "a+b", buffering=0) as f:  # + to read the last byte (see below)
            if not self._tail_checked:  # once per writer: a crashed one may have left half a line
                _drop_unfinished_line(f.fileno())
                self._tail_checked = True
            written = f.write(data) or 0
            while written < len(data):  # a short write (disk full, signal) finishes the line
                written += f.write(data[written:]) or 0

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_text_atomic(self.summary_path, _dumps(summary))  # serialised first: a failure keeps the old file

    def read_summary(self) -> dict[str, Any] | None:
        return _read_json(self.summary_path, _SUMMARY_FIX) if self.summary_path.exists() else None

    # --- notes and tags ----------------------------------------------------------------------------
    def read_notes(self) -> str:
        return self.notes_path.read_text(encoding="utf-8") if self.notes_path.exists() else ""

    def write_notes(self, text: str) -> None:
        write_text_atomic(self.notes_path, text)

    def read_tags(self) -> list[str]:
        if not self.tags_path.exists():
            return []
        lines = (line.strip() for line in self.tags_path.read_text(encoding="utf-8").splitlines())
        return list(dict.fromkeys(line for line in lines if line))

    def write_tags(self, tags: list[str]) -> None:
        clean = list(dict.fromkeys(check_name(t.strip() if isinstance(t, str) else t, "tag") for t in tags))
        write_text_atomic(self.tags_path, "".join(f"{t}\n" for t in clean))


def _drop_unfinished_line(fd: int) -> None:
    """Cut a last line that has no newline (a writer killed mid-line, or a disk that filled up), so the
    next record starts on a line of its own instead of being glued to the fragment and lost with it.
    Readers never consumed the fragment (they wait for its newline), so nothing they hold changes."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end, chunk = size, 1 << 16
    while end > 0:
        start = max(0, end - chunk)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            os.ftruncate(fd, start + found + 1)
            return
        end = start
    os.ftruncate(fd, 0)


class MetricsTail(FileTail):
    """Incremental reader of metrics.jsonl: each read_new() reads only the bytes appended since the last.

    An unfinished last line waits for its newline; a corrupt complete line is skipped and counted in
    `bad_lines`. If the file shrinks or is replaced (a resumed run rewrites it), reading restarts at 0
    and `resets` counts up, so a caller that kept records can drop them."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.bad_lines = 0

    def read_new(self) -> list[dict[str, Any]]:
        records = []
        for line in self.read_complete().split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # bad JSON or bad UTF-8: count it, never stop the reader
                rec = None
            if isinstance(rec, dict):
                records.append(rec)
            else:
                self.bad_lines += 1
        return records


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete, valid record of a metrics.jsonl ([] if there is none yet)."""
    return MetricsTail(path).read_new()


@dataclass
class RunInfo:
    """One row of list_runs: what the app's run table needs, or why the folder could not be read."""

    id: str
    path: Path
    state: str  # one of STATES, or "corrupt"
    config: dict[str, Any]
    status: dict[str, Any]
    summary: dict[str, Any] | None
    problem: str | None = None


def load_run(path: Path) -> RunInfo:
    """One run folder as `list_runs` reads it (never raises): for readers that re-read only what changed."""
    run = RunDir(path)
    problems: list[str] = []

    def attempt(name: str, read: Callable[[], Any], required: bool) -> Any:  # one bad file hides no other
        try:
            if (run.path / name).is_file():
                value = read()
                if isinstance(value, dict):
                    return value
                problems.append(f"{name}: expected a JSON object")
            elif required:
                problems.append(f"no {name}")
        except (FmaeError, OSError) as e:  # the folder is RunInfo.path: name the file only
            problems.append(str(e).replace(f"{run.path}{os.sep}", ""))
        return None

    config = attempt("run.toml", run.read_config, True) or {}
    status = attempt("status.json", run.read_status, True)
    if status is not None and status.get("state") not in STATES:
        problems.append(f"status.json: unknown state {status.get('state')!r}")
    status = status or {}
    state = "corrupt" if problems else str(status["state"])
    # A bad summary.json is reported but leaves the state alone: the run itself may be fine.
    summary = attempt("summary.json", run.read_summary, False)
    return RunInfo(run.id, path, state, config, status, summary, one_line("; ".join(problems)) if problems else None)


def run_folder_entries(runs_dir: Path) -> list[os.DirEntry]:
    """The folders under runs_dir that may be runs; none where runs_dir does not exist (yet)."""
    try:
        entries = list(os.scandir(runs_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise FmaeError(f"runs folder {runs_dir}: cannot list it: {e.strerror or e}") from None
    # Hidden names are ours (half-created runs, the run cache) or the user's; files are the queue's
    # database etc.
    return [entry for entry in entries if not entry.name.startswith(".") and entry.is_dir()]


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run folder under runs_dir, sorted by id (= creation time). Never raises for one bad folder."""
    out = []
    for entry in run_folder_entries(Path(runs_dir)):
        try:
            names = set(os.listdir(entry.path))
        except OSError as e:  # e.g. a folder without read permission: shown, not fatal
            out.append(RunInfo(entry.name, Path(entry.path), "corrupt", {}, {}, None, f"unreadable: {e.strerror}"))
            continue
        if {"run.toml", "status.json"} & names:
            out.append(load_run(Path(entry.path)))
    return sorted(out, key=lambda r: r.id)
