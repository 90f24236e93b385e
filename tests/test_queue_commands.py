"""The `fmae queue` commands: ls, cancel, retry, priority, rebuild. Real SQLite, real run folders, the real
CLI; no training (every command runs with --no-scheduler) but in one test, where the real scheduler launches a
trainer to show a job starting, then running, then cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import assert_one_line_error, run_fmae, stand_in_trainer
from fmae.queue import Queue
from fmae.runs import RunDir
from queue_support import _no_autostart, data_args, minimal_run, queued8, status  # noqa: F401



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
