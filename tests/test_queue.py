"""The job queue: matrix expansion, dedupe, `fmae queue add`, dispatch order, atomic claims across processes,
the launching state and the schema upgrade. Real SQLite, real run folders, the real CLI; no training (every
command runs with --no-scheduler). The other `fmae queue` commands are in tests/test_queue_commands.py."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_fmae
from fmae.config import load_project
from fmae.queue import Queue
from fmae.study import config_key, expand_matrix
from fmae.runs import RunDir
from queue_support import _no_autostart, add_args, data_args, minimal_run, queued8, status  # noqa: F401

FORK = multiprocessing.get_context("fork")



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
