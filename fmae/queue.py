"""The persistent job queue (`runs/queue.sqlite`), storage only: studies (matrices, dedupe, adding) are
fmae/study.py's, the experiment key fmae/run_spec.py's.

A job is a run folder plus what it needs to run (GPUs, processes) and where it runs (slot, pid). The
database lives beside the runs, in WAL mode, so the scheduler, the CLI and the app use it at once:
every public method is one short transaction (`BEGIN IMMEDIATE` for writes; SQLite serialises the
writers, so no update is lost). A job's `state` is a cache: the run folder's status.json is the truth,
and `Queue.rebuild` re-creates the rows from the folders.

No torch here: the app imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from fmae.errors import FmaeError
from fmae.run_spec import config_key
from fmae.runs import FINAL_STATES, STATES, RunDir, parse_utc

DB_NAME = "queue.sqlite"
LOCK_NAME = ".queue.lock"  # hidden: run listing ignores it
SCHEMA_VERSION = 3  # 2: the launcher column (the launching state); 3: keys without retired config keys
BUSY_TIMEOUT_MS = 15_000
ACTIVE_STATES = ("queued", "running", "done")  # a cell with a run in one of these is not added again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    gpus INTEGER NOT NULL DEFAULT 0,
    nproc INTEGER NOT NULL DEFAULT 1,
    slot TEXT,
    pid INTEGER,
    pgid INTEGER,
    added REAL NOT NULL,
    started REAL,
    ended REAL,
    cancel_requested REAL,
    task TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL DEFAULT '',
    fold INTEGER NOT NULL DEFAULT 0,
    seed INTEGER NOT NULL DEFAULT 0,
    lambda_id REAL NOT NULL DEFAULT 0,
    model TEXT NOT NULL DEFAULT '',
    recipe TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL DEFAULT '',
    error TEXT,
    launcher TEXT
);
CREATE INDEX IF NOT EXISTS jobs_dispatch ON jobs (state, priority DESC, id);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key);
"""
_COLUMNS = ("id", "run_id", "state", "priority", "gpus", "nproc", "slot", "pid", "pgid", "added", "started",
            "ended", "cancel_requested", "task", "dataset", "fold", "seed", "lambda_id", "model", "recipe", "key",
            "error", "launcher")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


@dataclass
class Job:
    id: int
    run_id: str
    path: Path
    state: str  # a cache of status.json's state (the truth)
    priority: int
    gpus: int  # GPUs per run; 0 = a CPU slot will do
    nproc: int
    slot: str | None
    pid: int | None
    pgid: int | None
    added: float  # unix times
    started: float | None
    ended: float | None
    cancel_requested: float | None
    task: str
    dataset: str
    fold: int
    seed: int
    lambda_id: float
    model: str
    recipe: str
    key: str
    error: str | None
    launcher: str | None = None  # "pid@host" of the scheduler that claimed it (state launching)


def read_status_fast(path: Path) -> dict[str, Any] | None:
    """status.json of a run folder as a dict, or None when it is missing or not a JSON object."""
    try:  # os.path, not pathlib: `queue ls` reads 10,000 of these
        with open(os.path.join(path, "status.json"), "rb") as f:
            status = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("state") in STATES else None


# --- the queue ------------------------------------------------------------------------------------

class Queue:
    """The job table of one runs folder. Safe to share between threads and across fork(): each thread of
    each process gets its own SQLite connection."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FmaeError(f"runs folder {self.runs_dir}: cannot create it: {e.strerror or e}") from None
        self.db_path = self.runs_dir / DB_NAME
        self._local = threading.local()
        if self._version() == SCHEMA_VERSION:  # the usual case: no write lock just to open the queue
            return
        with self._write() as db:
            version = self._version()
            if version == 1:  # a queue made before the launching state: one column more, rows kept
                db.execute("ALTER TABLE jobs ADD COLUMN launcher TEXT")
            if 1 <= version < 3:
                _rekey(db, self.runs_dir)
            elif version < 1:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _version(self) -> int:
        version = int(self._query("PRAGMA user_version")[0][0])
        if version > SCHEMA_VERSION:
            raise FmaeError(f"{self.db_path}: queue schema {version} is newer than this fmae understands "
                            f"({SCHEMA_VERSION}) — upgrade fmae")
        return version

    # --- connections and transactions ---------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        try:  # a connection inherited through fork() is never used: open our own
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: never corrupt; the folders are the truth
        except sqlite3.DatabaseError as e:
            raise self._db_error(e) from None
        self._local.conn = (os.getpid(), conn)
        return conn

    def _db_error(self, e: sqlite3.Error) -> FmaeError:
        if isinstance(e, sqlite3.OperationalError) and not _writable(self.runs_dir, self.db_path):
            # SQLite says "unable to open database file" / "readonly database": the folder is the cause
            return FmaeError(f"{self.db_path}: cannot open the queue for writing ({e}) — make the runs folder "
                             f"{self.runs_dir} writable for this user, or choose another runs_dir")
        return FmaeError(f"{self.db_path}: {e} — if the file is damaged, move it away and run `fmae queue rebuild`")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._db_error(e) from None
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise self._db_error(e) from None

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        try:
            return self._db().execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            raise self._db_error(e) from None

    def _job(self, row: tuple) -> Job:
        values = dict(zip(_COLUMNS, row))
        return Job(path=self.runs_dir / values["run_id"], **values)

    def close(self) -> None:
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == os.getpid():
            cached[1].close()
        self._local.conn = None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """An advisory lock across processes, held while checking for duplicates and adding (so two
        `fmae queue add` of the same matrix cannot both add it). Not needed for single calls."""
        import fcntl

        fd = os.open(self.runs_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- adding and reading -------------------------------------------------------------------------
    def add(self, run: RunDir, *, priority: int = 0, gpus: int = 0, nproc: int = 1) -> Job:
        """Queue a run folder of this runs folder (its state is taken from its status.json)."""
        if run.path.resolve().parent != self.runs_dir:
            raise FmaeError(f"{run.path}: not a run of the queue's runs folder {self.runs_dir}")
        if int(gpus) < 0 or int(nproc) < 1:
            raise FmaeError(f"run {run.id}: gpus must be >= 0 and nproc >= 1 (got {gpus}, {nproc})")
        cfg = run.read_config()
        state = run.read_status().get("state", "queued")
        if state not in STATES:
            raise FmaeError(f"{run.status_path}: unknown state {state!r}")
        with self._write() as db:
            row = db.execute("SELECT id FROM jobs WHERE run_id = ?", (run.id,)).fetchone()
            if row is not None:
                raise FmaeError(f"run {run.id} is already in the queue as job {row[0]}")
            cur = db.execute(
                "INSERT INTO jobs (run_id, state, priority, gpus, nproc, added, task, dataset, fold, seed, "
                "lambda_id, model, recipe, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.id, state, int(priority), int(gpus), int(nproc), time.time(), *_identity(cfg)))
            job_id = cur.lastrowid
        job = self.get(int(job_id))
        assert job is not None
        return job

    def get(self, job_id: int) -> Job | None:
        rows = self._query(f"{_SELECT} WHERE id = ?", (int(job_id),))
        return self._job(rows[0]) if rows else None

    def get_run(self, run_id: str) -> Job | None:
        """The job of a run id, or None."""
        rows = self._query(f"{_SELECT} WHERE run_id = ?", (run_id,))
        return self._job(rows[0]) if rows else None

    def jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        """Jobs ordered by id, optionally only those in `states`."""
        if states is None:
            return [self._job(r) for r in self._query(f"{_SELECT} ORDER BY id")]
        wanted = list(states)
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        return [self._job(r) for r in self._query(f"{_SELECT} WHERE state IN ({marks}) ORDER BY id", wanted)]

    def keys(self) -> list[tuple[str, str]]:
        """(run_id, experiment key) of every job, oldest first: what the study dedupes against."""
        return [(str(r), str(k)) for r, k in self._query("SELECT run_id, key FROM jobs ORDER BY id")]

    def job_dicts(self) -> list[dict[str, Any]]:
        """Every job as `vars(job)` would give it, by id, but with `path` as text: a listing of 10,000 jobs
        makes no Job or Path objects only to turn them into rows."""
        root = os.fspath(self.runs_dir)
        out = []
        for r in self._query(f"{_SELECT} ORDER BY id"):
            values = {"id": r[0], "run_id": r[1], "path": os.path.join(root, r[1])}  # Job's field order
            values.update(zip(_COLUMNS[2:], r[2:]))
            out.append(values)
        return out

    def pending(self) -> list[Job]:
        """Queued jobs in dispatch order: highest priority first, then oldest."""
        rows = self._query(f"{_SELECT} WHERE state = 'queued' ORDER BY priority DESC, id ASC")
        return [self._job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, 0 where none)."""
        found = dict(self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        found["running"] = found.get("running", 0) + found.pop("launching", 0)  # a launch takes milliseconds
        return {s: int(found.get(s, 0)) for s in STATES}

    # --- state changes ------------------------------------------------------------------------------
    def _require(self, db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute(f"{_SELECT} WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise FmaeError(f"job {job_id}: no such job in {self.db_path}")
        return self._job(row)

    def claim(self, job_id: int, slot: str, pid: int, pgid: int) -> bool:
        """queued → running, atomically: False when the job is not queued any more (cancelled, or claimed)."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'running', slot = ?, pid = ?, pgid = ?, started = ?, ended = NULL, "
                "cancel_requested = NULL, error = NULL WHERE id = ? AND state = 'queued'",
                (slot, int(pid), int(pgid), time.time(), int(job_id)))
            return cur.rowcount == 1

    def claim_launch(self, job_id: int, slot: str, launcher: str) -> bool:
        """queued → launching, atomically, BEFORE the trainer is spawned: a scheduler killed between the
        claim and the spawn leaves a launching row (naming it), never a queued one that a second scheduler
        would launch again. False when the job is not queued any more."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'launching', slot = ?, launcher = ?, pid = NULL, pgid = NULL, started = ?, "
                "ended = NULL, cancel_requested = NULL, error = NULL WHERE id = ? AND state = 'queued'",
                (slot, launcher, time.time(), int(job_id)))
            return cur.rowcount == 1

    def launched(self, job_id: int, pid: int, pgid: int) -> Job:
        """launching → running with the trainer's process (or a running job's process corrected, when the
        scheduler adopts the trainer that holds the run); returns the job (a cancel may have come meanwhile)."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state = 'running', pid = ?, pgid = ? WHERE id = ? "
                       "AND state IN ('launching', 'running')",
                       (int(pid), int(pgid), int(job_id)))
            return self._require(db, job_id)

    def unlaunch(self, job_id: int) -> None:
        """launching → queued: the spawn failed, or its scheduler died before any trainer took the run."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state = 'queued', slot = NULL, launcher = NULL, pid = NULL, pgid = NULL, "
                       "started = NULL WHERE id = ? AND state = 'launching'", (int(job_id),))

    def finish(self, job_id: int, state: str, error: str | None = None) -> None:
        """→ done, failed or cancelled; ended = now."""
        if state not in FINAL_STATES:
            raise ValueError(f"state {state!r}: a job ends {', '.join(FINAL_STATES)}")
        with self._write() as db:
            self._require(db, job_id)
            db.execute("UPDATE jobs SET state = ?, ended = ?, error = ? WHERE id = ?",
                       (state, time.time(), error, int(job_id)))

    def requeue(self, job_id: int) -> None:
        """failed/cancelled → queued, forgetting the last attempt (slot, process, end, error)."""
        with self._write() as db:
            job = self._require(db, job_id)
            if job.state not in ("failed", "cancelled"):
                raise FmaeError(f"job {job_id} ({job.run_id}) is {job.state}: only failed or cancelled jobs can be "
                                "retried" + (" — a done run is not re-run; queue a new one" if job.state == "done" else ""))
            db.execute("UPDATE jobs SET state = 'queued', slot = NULL, pid = NULL, pgid = NULL, started = NULL, "
                       "ended = NULL, cancel_requested = NULL, error = NULL WHERE id = ?", (int(job_id),))

    def cancel(self, job_id: int) -> Job:
        """In one transaction: a queued job becomes cancelled (it can no longer be claimed); a running one
        gets cancel_requested. Returns the job as it now is; FmaeError for a finished job."""
        with self._write() as db:
            job = self._require(db, job_id)
            now = time.time()
            if job.state == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', ended = ?, cancel_requested = ?, error = ? "
                           "WHERE id = ?", (now, now, "cancelled before it started", int(job_id)))
            elif job.state in ("running", "launching"):  # the scheduler signals it once it has a pid
                if job.cancel_requested is None:
                    db.execute("UPDATE jobs SET cancel_requested = ? WHERE id = ?", (now, int(job_id)))
            else:
                raise FmaeError(f"job {job_id} ({job.run_id}) is {job.state}: only queued or running jobs can be "
                                "cancelled")
            return self._require(db, job_id)

    def set_priority(self, job_id: int, priority: int) -> None:
        with self._write() as db:
            self._require(db, job_id)
            db.execute("UPDATE jobs SET priority = ? WHERE id = ?", (int(priority), int(job_id)))

    # --- the folders are the truth ------------------------------------------------------------------
    def rebuild(self, gpus: int | None = None) -> int:
        """Add a row for every run folder missing from the table, with its status.json's state, times and
        process; returns how many were added. Folders that cannot be read are left out. The GPUs a job
        needs are the number its last attempt was given, else `gpus` (default 0); priorities start at 0."""
        known = {r[0] for r in self._query("SELECT run_id FROM jobs")}
        try:
            names = sorted(e.name for e in os.scandir(self.runs_dir)
                           if not e.name.startswith(".") and e.name not in known and e.is_dir())
        except OSError as e:
            raise FmaeError(f"runs folder {self.runs_dir}: cannot list it: {e.strerror or e}") from None
        rows = []
        for name in names:  # run ids sort by creation time, so new job ids follow the runs' order
            run = RunDir(self.runs_dir / name)
            try:
                cfg = run.read_config()
                status = run.read_status()
            except (FmaeError, OSError):
                continue
            state = status.get("state")
            if state not in STATES or not isinstance(cfg, dict) or not cfg.get("dataset"):
                continue
            given = status.get("gpus")
            need = len(given) if isinstance(given, list) else int(gpus or 0)
            added = parse_utc(status.get("created")) or _mtime(run.status_path)
            pid, pgid = status.get("pid"), status.get("pgid")
            rows.append((name, state, need, max(1, need), added, parse_utc(status.get("started")),
                         parse_utc(status.get("ended")), pid if isinstance(pid, int) else None,
                         pgid if isinstance(pgid, int) else None, status.get("error"), *_identity(cfg)))
        added_n = 0
        with self._write() as db:
            for row in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO jobs (run_id, state, gpus, nproc, added, started, ended, pid, pgid, error, "
                    "task, dataset, fold, seed, lambda_id, model, recipe, key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                added_n += cur.rowcount
        return added_n


def _rekey(db: sqlite3.Connection, runs_dir: Path) -> None:
    """A row's key is a cache of its run.toml's `config_key`: computed again when the key's definition
    changed (schema 3: the retired global_pool left it), so cells queued before dedupe as before."""
    for job_id, run_id, key in db.execute("SELECT id, run_id, key FROM jobs").fetchall():
        try:
            fresh = config_key(RunDir(runs_dir / run_id).read_config())
        except (FmaeError, OSError):
            continue  # a folder gone or unreadable keeps its row's key (rebuild re-reads folders)
        if fresh != key:
            db.execute("UPDATE jobs SET key = ? WHERE id = ?", (fresh, job_id))


def _writable(folder: Path, db: Path) -> bool:
    """Whether this process can create files in `folder` (WAL needs -wal/-shm beside the database) and
    write the database. Tried, not derived from mode bits: root, ACLs and read-only mounts all count."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        if db.exists():
            with open(db, "r+b"):
                pass
    except OSError:
        return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _identity(cfg: Mapping[str, Any]) -> tuple:
    """task, dataset, fold, seed, lambda_id, model, recipe, key: the columns a table shows and filters."""
    def num(name: str, kind: type, default: Any) -> Any:
        try:
            return kind(cfg.get(name, default))
        except (TypeError, ValueError):
            return default

    return (str(cfg.get("task", "")), str(cfg.get("dataset", "")), num("fold", int, 0), num("seed", int, 0),
            num("lambda_id", float, 0.0), str(cfg.get("model", "")), str(cfg.get("recipe", "")), config_key(cfg))
