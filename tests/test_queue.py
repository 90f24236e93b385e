"""The job queue: matrix expansion, dedupe, dispatch order, atomic claims across processes, the
`fmae queue` commands, rebuilding from run folders. Real SQLite, real run folders, the real CLI; no
training (every command runs with --no-scheduler) but in one test, where the real scheduler launches a
trainer to show a job starting, then running, then cancelled."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_fmae, stand_in_trainer
from fmae.config import load_project
from fmae.queue import Queue
from fmae.study import config_key, expand_matrix
from fmae.runs import RunDir, make_run_id


@pytest.fixture(autouse=True)
def _no_autostart(monkeypatch):
    """These tests look at the queue's rows as they leave them: `queue ls/cancel/priority/rebuild` must
    not start a scheduler that would act on them (tests/test_scheduler.py covers that it does)."""
    monkeypatch.setenv("FMAE_NO_AUTOSTART", "1")

FORK = multiprocessing.get_context("fork")


def data_args(root: Path) -> list:
    return ["--root", root, "--labels", root / "labels.jsonl"]


def add_args(root: Path, runs: Path, *extra) -> list:
    return ["queue", "add", "bp4d", "--folds", "1,2", "--seeds", "0,1", "--lambdas", "0,2", "--model", "vit_tiny",
            "--epochs", "1", "--gpus-per-run", "0", *data_args(root), "--runs-dir", runs, "--no-scheduler", *extra]


def minimal_run(runs: Path, seed: int, **extra) -> RunDir:
    cfg = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": seed, "lambda_id": 0.0, "model": "vit_tiny",
           "recipe": "fmae", **extra}
    run_id = make_run_id("bp4d", "vit_tiny", seed, fold=1, lambda_id=0.0)
    return RunDir.create(runs, run_id, cfg, {"command": ["test"]})


def status(run_path: Path) -> dict:
    return json.loads((Path(run_path) / "status.json").read_text())


def invoke(*args, cwd: Path) -> str:
    """`fmae ARGS…` in this process (for setting up; the assertions use real subprocesses)."""
    from typer.testing import CliRunner

    from fmae.cli import app

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "FMAE_CONFIG": None})
    finally:
        os.chdir(old)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture
def queued8(make_synth, tmp_path):
    """8 queued jobs (2 folds × 2 seeds × 2 λ) made by `fmae queue add`."""
    runs = tmp_path / "runs"
    assert "8 to add" in invoke(*add_args(make_synth("bp4d"), runs), cwd=tmp_path)
    return runs


# --- identity and matrix -------------------------------------------------------------------------------

def test_config_key_ignores_execution_settings_and_number_spelling():
    base = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 2.0, "betas": (0.9, 0.999)}
    same = {**base, "lambda_id": 2, "betas": [0.9, 0.999], "device": "cuda", "num_workers": 8, "amp": "bf16",
            "data_root": "/elsewhere", "labels": "/elsewhere/l.jsonl", "log_every": 5, "init": None,
            "data_cache": "off", "fused_attn": False, "fused_optimizer": False}  # fast paths: same numbers
    assert config_key(base) == config_key(same)
    assert config_key(base) != config_key({**base, "seed": 1})
    assert config_key(base) != config_key({**base, "lambda_id": 0.5})


def test_matrix_sizes(make_synth, tmp_path):
    project = load_project(cwd=tmp_path, runs_dir=tmp_path / "runs")
    bp4d = make_synth("bp4d")
    cells = expand_matrix(project, "bp4d", folds=[1, 2], seeds=[0, 1], lambdas=[0, 2], recipe=None,
                          cli={"model": "vit_tiny"}, root=bp4d, labels=bp4d / "labels.jsonl")
    assert len(cells) == 8
    combos = {(c.values["fold"], c.values["seed"], c.values["lambda_id"]) for c in cells}
    assert combos == {(f, s, float(lam)) for f in (1, 2) for s in (0, 1) for lam in (0, 2)}
    assert len({config_key(c.values) for c in cells}) == 8
    # FER: one split and no λ, so only the seeds multiply.
    rafdb = make_synth("rafdb")
    fer = expand_matrix(project, "rafdb", folds=[1, 2, 3], seeds=[0, 1], lambdas=[0, 2], recipe=None,
                        cli={"model": "vit_tiny"}, root=rafdb)
    assert [(c.values["task"], c.values["seed"], c.values["fold"]) for c in fer] == [("fer", 0, 0), ("fer", 1, 0)]
    result = run_fmae("queue", "add", "rafdb", "--folds", "1,2", "--seeds", "0,1,2", "--lambdas", "0,2",
                      "--model", "vit_tiny", "--root", rafdb, "--runs-dir", tmp_path / "runs", "--dry-run",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 cell(s)" in result.stdout and "ignored" in result.stdout


def test_queue_module_does_not_import_torch():
    code = "import sys, fmae.queue; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- add ---------------------------------------------------------------------------------------------

def test_add_creates_queued_runs_and_skips_existing_cells(make_synth, queued8, tmp_path):
    runs = queued8
    folders = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(folders) == 8 and all(status(p)["state"] == "queued" for p in folders)
    q = Queue(runs)
    jobs = q.jobs()
    assert [j.id for j in jobs] == list(range(1, 9))
    assert {j.run_id for j in jobs} == {p.name for p in folders}
    assert all(j.state == "queued" and j.gpus == 0 and j.nproc == 1 and j.model == "vit_tiny" for j in jobs)
    assert {(j.fold, j.seed, j.lambda_id) for j in jobs} == {(f, s, float(x)) for f in (1, 2) for s in (0, 1)
                                                             for x in (0, 2)}
    with sqlite3.connect(runs / "queue.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # A done run counts too: re-adding the same matrix skips every cell and names the existing run.
    RunDir(folders[0]).mark_ended("done", exit_code=0)
    again = run_fmae(*add_args(make_synth("bp4d"), runs), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "8 cell(s): 0 to add, 8 skipped" in again.stdout
    for p in folders:
        assert p.name in again.stdout
    assert f"{folders[0].name} (done)" in again.stdout
    assert len(Queue(runs).jobs()) == 8

    # A cancelled (or failed) run does not block its cell.
    q.cancel(jobs[1].id)
    RunDir(jobs[1].path).mark_ended("cancelled")
    third = run_fmae(*add_args(make_synth("bp4d"), runs), cwd=tmp_path)
    assert "1 to add, 7 skipped" in third.stdout, third.stdout

    forced = run_fmae(*add_args(make_synth("bp4d"), runs, "--force", "--priority", "3"), cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "8 to add, 0 skipped" in forced.stdout
    assert len(Queue(runs).jobs()) == 17
    assert [j.priority for j in Queue(runs).jobs()][-8:] == [3] * 8


def test_add_skips_runs_made_outside_the_queue(make_synth, tmp_path):
    """A run from `fmae train` (not in the queue) with the same resolved config is a done cell."""
    from fmae.run_config import create_run

    runs, bp4d = tmp_path / "runs", make_synth("bp4d")
    project = load_project(cwd=tmp_path, runs_dir=runs)
    cell = expand_matrix(project, "bp4d", folds=[1], seeds=[0], lambdas=[0], recipe=None,
                         cli={"model": "vit_tiny", "epochs": 1, "device": "cpu"}, root=bp4d,
                         labels=bp4d / "labels.jsonl")[0]
    trained = create_run(runs, cell)
    trained.mark_ended("done", exit_code=0)
    result = run_fmae(*add_args(bp4d, runs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "7 to add, 1 skipped" in result.stdout and trained.id in result.stdout


def test_dry_run_creates_nothing_and_generates_no_data(tmp_path):
    (tmp_path / "fmae.toml").write_text(
        'runs_dir = "runs"\n[datasets.bp4d]\nroot = "data/bp4d"\nlabels = "data/bp4d/labels.jsonl"\n'
        "synthetic = { subjects = 6, frames = 4, size = 32, seed = 0 }\n")
    result = run_fmae("queue", "add", "bp4d", "--folds", "1,2,3", "--seeds", "0,1", "--model", "vit_tiny",
                      "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "6 cell(s): 6 to add" in result.stdout
    assert "GPU plan" in result.stdout or "CPU" in result.stdout  # the plan line
    assert "dry run: nothing created" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fmae.toml"]


def test_add_bad_input_is_one_line(make_synth, tmp_path):
    root, runs = make_synth("bp4d"), tmp_path / "runs"
    assert_one_line_error(run_fmae("queue", "add", "bp4d", "--folds", "1,x", *data_args(root), "--runs-dir", runs,
                                   "--no-scheduler", cwd=tmp_path), "--folds")
    assert_one_line_error(run_fmae("queue", "add", "bp4d", "--folds", "9", *data_args(root), "--runs-dir", runs,
                                   "--no-scheduler", cwd=tmp_path), "9")
    assert_one_line_error(run_fmae("queue", "add", "bp4d", "--folds", "1", "--lambdas", "-1", *data_args(root),
                                   "--runs-dir", runs, "--no-scheduler", cwd=tmp_path), "lambda_id")
    assert not (runs.exists() and any(p.is_dir() for p in runs.iterdir()))


# --- the Queue API -----------------------------------------------------------------------------------

def test_dispatch_order_is_priority_then_id(tmp_path):
    runs = tmp_path / "runs"
    q = Queue(runs)
    jobs = [q.add(minimal_run(runs, i), priority=p) for i, p in enumerate([0, 5, 0, 5, -1])]
    assert [j.id for j in q.pending()] == [jobs[1].id, jobs[3].id, jobs[0].id, jobs[2].id, jobs[4].id]
    q.set_priority(jobs[4].id, 9)
    assert q.pending()[0].id == jobs[4].id
    assert q.claim(jobs[4].id, "cpu0", 123, 123)
    assert jobs[4].id not in [j.id for j in q.pending()]
    assert not q.claim(jobs[4].id, "cpu1", 124, 124)  # not queued any more
    running = q.get(jobs[4].id)
    assert (running.state, running.slot, running.pid, running.pgid) == ("running", "cpu0", 123, 123)
    q.finish(jobs[4].id, "failed", error="boom")
    assert q.get(jobs[4].id).state == "failed" and q.get(jobs[4].id).ended is not None
    q.requeue(jobs[4].id)
    back = q.get(jobs[4].id)
    assert (back.state, back.pid, back.slot, back.ended, back.error) == ("queued", None, None, None, None)
    assert [j.id for j in q.jobs(["queued"])] == sorted(j.id for j in jobs)


def _claim(runs: str, job_id: int, barrier, results) -> None:
    q = Queue(Path(runs))
    barrier.wait()
    results.put((os.getpid(), q.claim(job_id, f"slot-{os.getpid()}", os.getpid(), os.getpid())))


def test_claim_is_atomic_across_processes(tmp_path):
    runs = tmp_path / "runs"
    q = Queue(runs)
    ids = [q.add(minimal_run(runs, i)).id for i in range(5)]
    for job_id in ids:
        barrier, results = FORK.Barrier(2), FORK.Queue()
        procs = [FORK.Process(target=_claim, args=(str(runs), job_id, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        got = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert sorted(ok for _, ok in got) == [False, True]
        winner = next(pid for pid, ok in got if ok)
        assert q.get(job_id).pid == winner and q.get(job_id).slot == f"slot-{winner}"


def _add_many(runs: str, start: int, n: int, barrier) -> None:
    q = Queue(Path(runs))
    barrier.wait()
    for i in range(start, start + n):
        q.add(minimal_run(Path(runs), i))


def test_concurrent_adds_lose_nothing(tmp_path):
    runs = tmp_path / "runs"
    Queue(runs)
    barrier = FORK.Barrier(2)
    procs = [FORK.Process(target=_add_many, args=(str(runs), k * 100, 40, barrier)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    jobs = Queue(runs).jobs()
    assert len(jobs) == 80 and len({j.id for j in jobs}) == 80
    assert sorted(j.seed for j in jobs) == sorted([*range(0, 40), *range(100, 140)])
    folders = {p.name for p in runs.iterdir() if p.is_dir()}
    assert {j.run_id for j in jobs} == folders


def test_add_refuses_a_run_twice_or_from_elsewhere(tmp_path):
    q = Queue(tmp_path / "runs")
    run = minimal_run(tmp_path / "runs", 0)
    q.add(run)
    with pytest.raises(Exception, match="already in the queue as job 1"):
        q.add(run)
    with pytest.raises(Exception, match="not a run of the queue's runs folder"):
        q.add(minimal_run(tmp_path / "other", 1))


# --- ls, cancel, retry, priority, rebuild ---------------------------------------------------------

def test_ls_table_and_json(queued8, tmp_path):
    runs = queued8
    q = Queue(runs)
    jobs = q.jobs()
    assert q.claim(jobs[0].id, "gpu0", 4242, 4242)
    RunDir(jobs[0].path).mark_running(pid=4242, pgid=4242, gpus="0")
    RunDir(jobs[0].path).heartbeat(epoch=2, epochs=5, step=30, total_steps=75)
    (jobs[1].path / "status.json").write_text("{not json")
    q.set_priority(jobs[2].id, 7)

    result = run_fmae("queue", "ls", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if " id " in f" {line} " and "progress" in line)
    for col in ("id", "state", "dataset", "fold", "seed", "λ", "model", "GPU", "progress", "age"):
        assert col in header
    row1 = next(line for line in lines if line.split()[:1] == ["1"])
    assert "running" in row1 and "gpu0" in row1 and "e 2/5 · s 30/75" in row1 and "vit_tiny" in row1
    assert "corrupt" in next(line for line in lines if line.split()[:1] == ["2"])
    assert "p7" in next(line for line in lines if line.split()[:1] == ["3"])

    as_json = run_fmae("queue", "ls", "--json", "--runs-dir", runs, cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [r["id"] for r in rows] == list(range(1, 9))
    first = rows[0]
    assert (first["state"], first["slot"], first["epoch"], first["total_steps"]) == ("running", "gpu0", 2, 75)
    assert rows[1]["state"] == "corrupt" and rows[2]["priority"] == 7
    assert {"run_id", "dataset", "fold", "seed", "lambda_id", "model", "progress", "queue_state"} <= set(first)

    only = json.loads(run_fmae("queue", "ls", "--json", "--state", "running", "--runs-dir", runs, cwd=tmp_path).stdout)
    assert [r["id"] for r in only] == [1]


def test_ls_hides_old_finished_jobs_unless_all(tmp_path):
    from fmae.queue_ops import queue_rows

    runs = tmp_path / "runs"
    q = Queue(runs)
    jobs = [q.add(minimal_run(runs, i)) for i in range(25)]
    for job in jobs[:23]:
        q.finish(job.id, "done")
        RunDir(job.path).mark_ended("done", exit_code=0)
    rows, hidden = queue_rows(q)
    assert hidden == 3 and len(rows) == 22
    assert {r["id"] for r in rows} >= {jobs[23].id, jobs[24].id}
    rows, hidden = queue_rows(q, all_=True)
    assert hidden == 0 and len(rows) == 25


def test_ls_with_a_status_cache_reads_only_what_changed(tmp_path, monkeypatch):
    from fmae import queue_ops

    runs = tmp_path / "runs"
    q = Queue(runs)
    jobs = [q.add(minimal_run(runs, i)) for i in range(4)]
    for job, state in zip(jobs, ("failed", "done")):
        q.finish(job.id, state)
        RunDir(job.path).mark_ended(state, exit_code=1 if state == "failed" else 0)
    monkeypatch.setattr(queue_ops.StatusCache, "RACY_NS", 0)  # the files were written just now
    cache = queue_ops.StatusCache()
    plain = queue_rows_states(queue_ops.queue_rows(q, all_=True)[0])
    assert queue_rows_states(queue_ops.queue_rows(q, all_=True, cache=cache)[0]) == plain
    assert cache.reads == 4
    queue_ops.queue_rows(q, all_=True, cache=cache)
    assert cache.reads == 4  # nothing changed: nothing read
    RunDir(jobs[2].path).update_status(epoch=3, epochs=9)  # an unfinished job's status moves
    rows = {r["id"]: r for r in queue_ops.queue_rows(q, all_=True, cache=cache)[0]}
    assert cache.reads == 5 and rows[jobs[2].id]["epoch"] == 3
    q.requeue(jobs[0].id)  # a finished job back in line: its row changes first, then its status.json
    RunDir(jobs[0].path).mark_queued()
    rows = {r["id"]: r for r in queue_ops.queue_rows(q, all_=True, cache=cache)[0]}
    assert rows[jobs[0].id]["state"] == "queued" and cache.reads == 6
    assert queue_rows_states(queue_ops.queue_rows(q, all_=True, cache=cache)[0]) == \
        queue_rows_states(queue_ops.queue_rows(q, all_=True)[0])


def queue_rows_states(rows):
    return [(r["id"], r["state"], r["epoch"], r["progress"]) for r in rows]


def test_cancel_queued_job(queued8, tmp_path):
    runs = queued8
    q = Queue(runs)
    job = q.jobs()[3]
    result = run_fmae("queue", "cancel", str(job.id), "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"job {job.id} cancelled" in result.stdout and job.run_id in result.stdout
    assert q.get(job.id).state == "cancelled"
    st = status(job.path)
    assert st["state"] == "cancelled" and st["error"] == "cancelled before it started" and "ended" in st
    assert job.id not in [j.id for j in q.pending()]
    assert not q.claim(job.id, "cpu0", 1, 1)
    # again: a finished job cannot be cancelled
    assert_one_line_error(run_fmae("queue", "cancel", str(job.id), "--runs-dir", runs, cwd=tmp_path),
                          f"job {job.id}", "cancelled")
    # --all cancels the rest
    result = run_fmae("queue", "cancel", "--all", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(j.state == "cancelled" for j in q.jobs())
    assert all(status(j.path)["state"] == "cancelled" for j in q.jobs())


def test_cancel_running_job_signals_its_process_group(tmp_path):
    runs = tmp_path / "runs"
    q = Queue(runs)
    job = q.add(minimal_run(runs, 0))
    proc = stand_in_trainer(job.path)
    try:
        assert q.claim(job.id, "cpu0", proc.pid, proc.pid)
        RunDir(job.path).mark_running(pid=proc.pid, pgid=proc.pid, host=os.uname().nodename, gpus="")
        result = run_fmae("queue", "cancel", job.run_id, "--runs-dir", runs, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "SIGTERM" in result.stdout
        assert proc.wait(timeout=20) == -signal.SIGTERM
        now = q.get(job.id)
        assert now.state == "running" and now.cancel_requested is not None  # the scheduler records the end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_retry_failed_or_cancelled(queued8, tmp_path):
    runs = queued8
    q = Queue(runs)
    failed, cancelled, done = q.jobs()[:3]
    for job, state in ((failed, "failed"), (cancelled, "cancelled"), (done, "done")):
        assert q.claim(job.id, "cpu0", 1, 1)
        RunDir(job.path).mark_running(pid=1, pgid=1, gpus="")
        RunDir(job.path).mark_ended(state, exit_code=1, error="boom" if state == "failed" else None)
        q.finish(job.id, state, error="boom" if state == "failed" else None)
    (cancelled.path / "checkpoints").mkdir()
    (cancelled.path / "checkpoints" / "last.pt").write_bytes(b"x")

    result = run_fmae("queue", "retry", str(failed.id), str(cancelled.id), "--no-scheduler", "--runs-dir", runs,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resumes from checkpoints/last.pt" in result.stdout and "no checkpoint" in result.stdout
    for job in (failed, cancelled):
        row, st = q.get(job.id), status(job.path)
        assert row.state == "queued" and row.pid is None and row.error is None and row.ended is None
        assert st["state"] == "queued" and not {"pid", "error", "ended", "exit_code"} & set(st)
    assert [j.id for j in q.pending()][:2] == [failed.id, cancelled.id]

    # The run folder says cancelled but the row still says running (no scheduler noticed the exit): the
    # folder is the truth, so it can be retried once its process is gone.
    ended = q.jobs()[3]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert q.claim(ended.id, "cpu0", gone.pid, gone.pid)
    RunDir(ended.path).mark_running(pid=gone.pid, pgid=gone.pid, host=os.uname().nodename, gpus="")
    RunDir(ended.path).mark_ended("cancelled", exit_code=143, error="cancelled")
    result = run_fmae("queue", "retry", str(ended.id), "--no-scheduler", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert q.get(ended.id).state == "queued" and status(ended.path)["state"] == "queued"

    assert_one_line_error(run_fmae("queue", "retry", str(done.id), "--no-scheduler", "--runs-dir", runs,
                                   cwd=tmp_path), f"job {done.id}", "done")
    assert_one_line_error(run_fmae("queue", "retry", str(failed.id), "--no-scheduler", "--runs-dir", runs,
                                   cwd=tmp_path), f"job {failed.id}", "queued")


def test_bad_ids_are_one_line_errors(queued8, tmp_path):
    runs = queued8
    for args in (("cancel", "999"), ("retry", "999", "--no-scheduler"), ("priority", "999", "1"),
                 ("cancel", "no-such-run")):
        assert_one_line_error(run_fmae("queue", *args, "--runs-dir", runs, cwd=tmp_path),
                              f"job {args[1]}", "no such job")
    assert_one_line_error(run_fmae("queue", "cancel", "--runs-dir", runs, cwd=tmp_path), "--all")
    assert_one_line_error(run_fmae("queue", "ls", "--state", "bogus", "--runs-dir", runs, cwd=tmp_path), "--state")
    # nothing changed
    assert all(j.state == "queued" for j in Queue(runs).jobs())


def test_priority_reorders(queued8, tmp_path):
    runs = queued8
    result = run_fmae("queue", "priority", "6", "5", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "job 6: priority 5; 1 of 8 in line" in result.stdout
    result = run_fmae("queue", "priority", "1", "-2", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [j.id for j in Queue(runs).pending()] == [6, 2, 3, 4, 5, 7, 8, 1]


def test_rebuild_recovers_every_job_with_its_state(tmp_path):
    runs = tmp_path / "runs"
    q = Queue(runs)
    states = ["queued", "done", "failed", "cancelled", "running", "queued"]
    jobs = [q.add(minimal_run(runs, i)) for i in range(len(states))]
    for job, state in zip(jobs, states):
        run = RunDir(job.path)
        if state != "queued":
            run.mark_running(pid=os.getpid(), pgid=os.getpgrp(), gpus="0,1")
        if state in ("done", "failed", "cancelled"):
            run.mark_ended(state, error="boom" if state == "failed" else None)
    (runs / ".hidden").mkdir()
    (runs / "not-a-run").mkdir()
    before = {j.run_id: (j.seed, j.key) for j in q.jobs()}
    q.close()
    for p in runs.glob("queue.sqlite*"):
        p.unlink()

    result = run_fmae("queue", "rebuild", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{len(states)} job(s) added" in result.stdout
    rebuilt = Queue(runs).jobs()
    assert {j.run_id: j.state for j in rebuilt} == {j.run_id: s for j, s in zip(jobs, states)}
    assert {j.run_id: (j.seed, j.key) for j in rebuilt} == before
    by_run = {j.run_id: j for j in rebuilt}
    assert by_run[jobs[2].run_id].error == "boom"
    assert by_run[jobs[4].run_id].pid == os.getpid() and by_run[jobs[4].run_id].gpus == 2
    assert Queue(runs).rebuild() == 0  # idempotent


def test_ls_with_1000_jobs_is_fast(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fmae.cli import app

    runs = tmp_path / "runs"
    q = Queue(runs)
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", lambda fd: None)  # making the folders is not what is measured
        jobs = [q.add(minimal_run(runs, i)) for i in range(1000)]
    for job in jobs[:100]:
        q.finish(job.id, "done")
        RunDir(job.path).mark_ended("done", exit_code=0)
    runner = CliRunner()
    for args in (["queue", "ls"], ["queue", "ls", "--all"], ["queue", "ls", "--json"]):
        start = time.perf_counter()
        result = runner.invoke(app, [*args, "--runs-dir", str(runs)], env={"COLUMNS": "200"})
        seconds = time.perf_counter() - start
        assert result.exit_code == 0, result.output
        assert seconds < 2.0, (args, seconds)
    assert "1000" in result.output or len(json.loads(result.output)) == 1000


def test_launching_is_claimed_before_the_spawn_and_names_its_scheduler(tmp_path):
    q = Queue(tmp_path / "runs")
    a, b = q.add(minimal_run(tmp_path / "runs", 0)), q.add(minimal_run(tmp_path / "runs", 1))
    assert q.claim_launch(a.id, "cpu0", "123@host")
    assert not q.claim_launch(a.id, "cpu1", "456@host")  # claimed once: a second scheduler gets nothing
    job = q.get(a.id)
    assert (job.state, job.slot, job.launcher, job.pid) == ("launching", "cpu0", "123@host", None)
    assert q.counts()["running"] == 1 and [j.id for j in q.pending()] == [b.id]
    cancelled = q.cancel(a.id)  # a cancel meanwhile waits for the pid: the scheduler signals it
    assert cancelled.state == "launching" and cancelled.cancel_requested
    running = q.launched(a.id, 4242, 4242)
    assert (running.state, running.pid, running.cancel_requested is not None) == ("running", 4242, True)
    assert q.claim_launch(b.id, "cpu1", "123@host")
    q.unlaunch(b.id)  # its scheduler died before any trainer took the run
    back = q.get(b.id)
    assert (back.state, back.slot, back.launcher) == ("queued", None, None)


def test_a_queue_made_before_the_launching_state_is_upgraded_in_place(tmp_path):
    runs = tmp_path / "runs"
    q = Queue(runs)
    job = q.add(minimal_run(runs, 0))
    q.close()
    db = sqlite3.connect(runs / "queue.sqlite")  # back to schema 1: the table without `launcher`
    db.execute("ALTER TABLE jobs DROP COLUMN launcher")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    again = Queue(runs)
    assert [j.run_id for j in again.jobs()] == [job.run_id]
    assert again.claim_launch(job.id, "cpu0", "1@h") and again.get(job.id).launcher == "1@h"
    assert sqlite3.connect(runs / "queue.sqlite").execute("PRAGMA user_version").fetchone()[0] == 3  # (issue 16: re-keyed)


def test_a_launched_job_is_starting_until_its_trainer_runs_then_a_cancel_stops_it(make_synth, tmp_path, monkeypatch):
    """The real scheduler and trainer: held with SIGSTOP right after the spawn (torch not loaded, status.json
    still queued), `queue ls` says starting with elapsed counted from the launch; let go, running; then
    `queue cancel` stops it through the local executor (SIGTERM to its group) and it ends cancelled."""
    monkeypatch.delenv("FMAE_NO_AUTOSTART")
    runs = tmp_path / "runs"
    root = make_synth("bp4d")
    added = run_fmae("queue", "add", "bp4d", *data_args(root), "--model", "vit_tiny", "--folds", "1", "--seeds", "0",
                     "--epochs", "12", "--set", "input_size=32", "--set", "num_workers=0", "--set", "batch_size=8",
                     "--set", "log_every=1", "--runs-dir", runs, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    q = Queue(runs)
    deadline = time.time() + 120
    while time.time() < deadline and not (q.get(1).state == "running" and q.get(1).pgid):
        time.sleep(0.005)
    pgid = q.get(1).pgid
    os.killpg(pgid, signal.SIGSTOP)
    try:
        assert json.loads((q.get(1).path / "status.json").read_text())["state"] == "queued"
        time.sleep(1.1)
        lines = run_fmae("queue", "ls", "--runs-dir", runs, cwd=tmp_path).stdout.splitlines()
        (cells,) = [cells for cells in map(str.split, lines) if cells[:1] == ["1"] and len(cells) > 9]
        assert cells[1] == "starting" and cells[-3] != "-" and int(cells[-3].rstrip("s")) >= 1, lines  # elapsed
        assert "1 starting" in lines[-1]
    finally:
        os.killpg(pgid, signal.SIGCONT)
    run = RunDir(q.get(1).path)
    while time.time() < deadline and run.read_status()["state"] != "running":
        time.sleep(0.05)
    listed = run_fmae("queue", "ls", "--runs-dir", runs, cwd=tmp_path).stdout.splitlines()
    assert any(cells[:2] == ["1", "running"] for cells in map(str.split, listed)), listed
    try:
        cancelled = run_fmae("queue", "cancel", "1", "--runs-dir", runs, cwd=tmp_path)
        assert f"SIGTERM sent to process group {pgid}" in cancelled.stdout, cancelled.stdout
        while time.time() < deadline and run.read_status()["state"] == "running":
            time.sleep(0.05)
        assert run.read_status()["state"] == "cancelled"
    finally:
        run_fmae("scheduler", "stop", "--runs-dir", runs, cwd=tmp_path)
