"""Slurm runs through submitit: a real tiny training run through submitit's local executor (the same
pickling and job folder as on a cluster), a job whose function fails, the [executor.slurm] mapping
into a real sbatch file (stand-in `srun`/`sbatch`/`sacct` on PATH), and reconciliation of jobs that
Slurm ended before the trainer could record it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmae.config import ProjectConfig
from fmae.errors import FmaeError
from fmae.executors import slurm as S
from fmae.runs import RunDir

TINY = {"model": "vit_tiny", "epochs": 1, "batch_size": 8, "input_size": 32, "num_workers": 0}
SLURM = {"partition": "gpu", "account": "proj42", "time_minutes": 90, "cpus_per_task": 4, "mem_gib": 32}


def project(tmp_path: Path, **slurm) -> ProjectConfig:
    return ProjectConfig(path=None, base_dir=tmp_path, runs_dir=tmp_path / "runs", slurm={**SLURM, **slurm})


def make_run(tmp_path: Path, root: Path, **cli) -> Path:
    from fmae.run_config import create_run, resolve_run_config

    p = project(tmp_path)
    resolved = resolve_run_config(p, "bp4d", fold=1, cli={**TINY, **cli}, root=root, labels=root / "labels.jsonl")
    return create_run(p.runs_dir, resolved).path


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def wait_for_job(run: Path, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = S.slurm_state(run)
        if state != "RUNNING":
            return state
        time.sleep(0.5)
    raise AssertionError(f"the job of {run} still runs after {timeout} s; log: {list((run / 'slurm').iterdir())}")


# --- parameters -----------------------------------------------------------------------------------

def test_slurm_parameters_map_the_project_settings(tmp_path):
    p = project(tmp_path)
    assert S.slurm_parameters(p, 1, "run-a") == {
        "name": "run-a", "timeout_min": 90, "cpus_per_task": 4, "mem_gb": 32, "nodes": 1, "tasks_per_node": 1,
        "gpus_per_node": 1, "slurm_partition": "gpu", "slurm_account": "proj42"}
    # Empty partition/account are left to Slurm's defaults; a CPU run asks for no GPU; G GPUs → G tasks.
    cpu = S.slurm_parameters(project(tmp_path, partition="", account=""), 0, "r")
    assert "slurm_partition" not in cpu and "slurm_account" not in cpu and "gpus_per_node" not in cpu
    assert cpu["tasks_per_node"] == 1
    four = S.slurm_parameters(p, 4, "r")
    assert four["gpus_per_node"] == 4 and four["tasks_per_node"] == 4
    # A project without [executor.slurm] gets default_fmae.toml's values.
    bare = ProjectConfig(path=None, base_dir=tmp_path, runs_dir=tmp_path)
    assert S.slurm_parameters(bare, 1, "r")["timeout_min"] == 720
    with pytest.raises(FmaeError, match="time_minutes"):
        S.slurm_parameters(project(tmp_path, time_minutes=0), 1, "r")


def test_the_parameters_are_valid_for_submitit(tmp_path):
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
    ex.update_parameters(**S.slurm_parameters(project(tmp_path), 2, "r"))  # slurm_* ignored off Slurm
    assert ex._executor.parameters["gpus_per_node"] == 2 and ex._executor.parameters["timeout_min"] == 90


# --- a stand-in Slurm on PATH -----------------------------------------------------------------------

def _script(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` exists, `sbatch` accepts any job (id = its pid), `sacct` reports the state in a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state_file = tmp_path / "sacct_state"
    state_file.write_text("PENDING")
    _script(bin_dir, "srun", "exit 0\n")
    _script(bin_dir, "sbatch", 'echo "Submitted batch job $$"\n')
    _script(bin_dir, "scancel", f'echo "$@" >> {tmp_path / "scancelled"}\n')
    _script(bin_dir, "sacct", f'echo "$@" >> {tmp_path / "sacct_calls"}\n'
                              'echo "JobID|State|NodeList"\n'
                              'while [ $# -gt 0 ]; do\n'
                              f'  if [ "$1" = "-j" ]; then echo "$2|$(cat {state_file})|node7"; shift; fi\n'
                              '  shift\n'
                              'done\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return state_file


def test_submit_writes_the_sbatch_file_and_records_the_job(tmp_path, make_synth, fake_slurm):
    run = make_run(tmp_path, make_synth("bp4d"))
    job_id = S.submit_run(run, project(tmp_path), gpus=2)
    st = status(run)
    assert st["executor"] == "slurm" and st["slurm_job_id"] == job_id and st["slurm_cluster"] == "slurm"
    assert st["state"] == "queued"
    sbatch = (run / "slurm" / f"{job_id}_submission.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --time=90", "#SBATCH --mem=32GB",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --nodes=1", f"#SBATCH --job-name={run.name}"):
        assert line in sbatch.splitlines(), (line, sbatch)
    assert "submitit.core._submit" in sbatch and str(run / "slurm") in sbatch

    # Pending: nothing to reconcile. Killed for memory before the trainer ran: the run fails with why.
    assert S.slurm_state(run, force=True) == "PENDING"
    assert S.reconcile_slurm(run, force=True) is None and status(run)["state"] == "queued"
    fake_slurm.write_text("OUT_OF_MEMORY")
    assert S.reconcile_slurm(run, force=True) == "failed"
    st = status(run)
    assert st["state"] == "failed" and st["error"] == "slurm: OUT_OF_MEMORY" and st["ended"]
    assert S.reconcile_slurm(run, force=True) is None  # ended runs are left alone


def test_a_job_cancelled_in_slurm_is_recorded_cancelled(tmp_path, make_synth, fake_slurm):
    run = make_run(tmp_path, make_synth("bp4d"))
    S.submit_run(run, project(tmp_path), gpus=1)
    RunDir(run).update_status(state="running")
    fake_slurm.write_text("CANCELLED by 1000")
    assert S.slurm_state(run, force=True) == "CANCELLED by 1000"
    assert S.reconcile_slurm(run, force=True) == "cancelled"
    assert status(run)["error"] == "slurm: CANCELLED by 1000"


def test_cancel_goes_through_scancel(tmp_path, make_synth, fake_slurm):
    run = make_run(tmp_path, make_synth("bp4d"))
    job_id = S.submit_run(run, project(tmp_path), gpus=1)
    assert S.cancel_slurm(run) == f"scancel {job_id}"
    assert (tmp_path / "scancelled").read_text().split() == [job_id]


def test_a_run_finished_by_its_trainer_is_not_touched(tmp_path, make_synth, fake_slurm):
    run = make_run(tmp_path, make_synth("bp4d"))
    S.submit_run(run, project(tmp_path), gpus=1)
    RunDir(run).mark_ended("done", exit_code=0)
    fake_slurm.write_text("COMPLETED")
    assert S.reconcile_slurm(run, force=True) is None and status(run)["state"] == "done"


def test_a_refused_submission_fails_the_run_with_sbatch_reason(tmp_path, make_synth, fake_slurm):
    run = make_run(tmp_path, make_synth("bp4d"))
    _script(tmp_path / "bin", "sbatch", 'echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1\n')
    with pytest.raises(FmaeError, match="invalid partition specified") as e:
        S.submit_run(run, project(tmp_path))
    assert "[executor.slurm]" in str(e.value)
    st = status(run)
    assert st["state"] == "failed" and "invalid partition specified" in st["error"] and "slurm_job_id" not in st


def test_a_failed_run_is_resubmitted_as_queued(tmp_path, make_synth, fake_slurm):
    run = make_run(tmp_path, make_synth("bp4d"))
    RunDir(run).mark_ended("failed", exit_code=1, error="boom")
    S.submit_run(run, project(tmp_path))
    st = status(run)
    assert st["state"] == "queued" and "error" not in st and "ended" not in st


def test_submit_refuses_a_running_run_and_a_machine_without_slurm(tmp_path, make_synth, monkeypatch):
    run = make_run(tmp_path, make_synth("bp4d"))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no srun anywhere
    with pytest.raises(FmaeError, match="executor.kind = slurm"):
        S.submit_run(run, project(tmp_path))
    RunDir(run).update_status(state="running")
    with pytest.raises(FmaeError, match="is running"):
        S.submit_run(run, project(tmp_path), local=True)


# --- real jobs through submitit's local executor ---------------------------------------------------

def test_a_tiny_training_run_through_submitit(tmp_path, make_synth):
    run = make_run(tmp_path, make_synth("bp4d"))
    job_id = S.submit_run(run, project(tmp_path), gpus=0, local=True)
    st = status(run)
    assert st["executor"] == "slurm" and st["slurm_job_id"] == job_id and st["slurm_cluster"] == "local"
    assert wait_for_job(run) == "COMPLETED"
    assert S.load_job(run).result() == 0
    st = status(run)
    assert st["state"] == "done" and st["exit_code"] == 0 and st["slurm_job_id"] == job_id, st
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "test" and r["epoch"] == 1 for r in lines)
    assert (run / "summary.json").exists() and (run / "checkpoints" / "last.pt").exists()
    assert S.reconcile_slurm(run) is None


def test_a_job_whose_function_fails_fails_the_run_with_the_reason(tmp_path, make_synth):
    run = make_run(tmp_path, make_synth("bp4d"))
    (run / "run.toml").write_text("config = [\n")  # execute() fails before the trainer starts
    S.submit_run(run, project(tmp_path), gpus=0, local=True)
    assert wait_for_job(run) == "FAILED"
    error = S.load_job(run).exception()
    assert error is not None and "not valid TOML" in str(error)
    st = status(run)
    assert st["state"] == "failed" and "run.toml: not valid TOML" in st["error"] and st["exit_code"] == 2, st
    assert S.reconcile_slurm(run) is None


def _gpu_count() -> int:
    from fmae.gpus import discover

    return len(discover(max_age=0))


@pytest.mark.skipif(0 < _gpu_count() < 2, reason="a two-task job on a machine with one GPU would ask for two")
def test_a_two_task_run_trains_with_ddp_through_submitit(tmp_path, make_synth):
    """gpus=2 → two tasks; each gets RANK/WORLD_SIZE/MASTER_* from submitit (gloo on a CPU machine)."""
    run = make_run(tmp_path, make_synth("bp4d"))
    S.submit_run(run, project(tmp_path, cpus_per_task=1, mem_gib=4), gpus=2, local=True)
    assert wait_for_job(run) == "COMPLETED"
    assert S.load_job(run).results() == [0, 0]
    assert status(run)["state"] == "done"
    assert status(run)["total_steps"] == 2  # 32 training frames / (batch 8 × 2 processes); 4 in one process


def test_a_local_job_that_vanished_is_reconciled(tmp_path, make_synth):
    run = make_run(tmp_path, make_synth("bp4d"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    RunDir(run).update_status(state="running", executor="slurm", slurm_cluster="local",
                              slurm_job_id=str(gone.pid))
    assert S.slurm_state(run) == "INTERRUPTED"
    assert S.reconcile_slurm(run) == "failed"
    assert status(run)["error"] == "slurm: INTERRUPTED"


def test_a_run_never_submitted_has_no_slurm_state(tmp_path, make_synth):
    run = make_run(tmp_path, make_synth("bp4d"))
    assert S.slurm_state(run) is None and S.load_job(run) is None and S.reconcile_slurm(run) is None


def test_import_is_cheap():
    code = ("import sys, fmae.executors.slurm; "
            "print(sorted(m for m in ('torch', 'submitit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- issue 21: several nodes, job arrays, one sacct for all, preemption -------------------------------

def test_a_run_on_two_nodes_asks_slurm_for_both(tmp_path):
    two = S.slurm_parameters(project(tmp_path), 4, "r", nodes=2)
    assert (two["nodes"], two["tasks_per_node"], two["gpus_per_node"]) == (2, 4, 4)
    with pytest.raises(FmaeError, match="--nodes 0"):
        S.slurm_parameters(project(tmp_path), 1, "r", nodes=0)


def test_fmae_train_with_nodes_submits_one_multi_node_job(tmp_path, make_synth, fake_slurm):
    from conftest import run_fmae

    root = make_synth("bp4d")
    result = run_fmae("train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl",
                      "--model", "vit_tiny", "--epochs", "1", "--nodes", "2", "--gpus-per-node", "4",
                      "--runs-dir", tmp_path / "runs", cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert "as job" in result.stdout and "2 node(s) × 4 GPU(s)" in result.stdout
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    st = status(run)
    assert st["state"] == "queued" and st["slurm_cluster"] == "slurm" and st["slurm_job_id"]
    sbatch = (run / "slurm" / f"{st['slurm_job_id']}_submission.sh").read_text().splitlines()
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4"} <= set(sbatch)


def test_a_matrix_is_one_job_array_and_sacct_is_asked_about_all_jobs_at_once(tmp_path, make_synth, fake_slurm):
    """Three queued runs, two of them on 1 GPU and one on 2: one array of two (array_parallelism from
    fmae.toml) and one job. Polling every job many times asks sacct once, about both; 30 s later, again."""
    from fmae.executors import Claimed
    from fmae.executors.cluster import SlurmExecutor
    from fmae.queue import Queue

    root = make_synth("bp4d")
    p = project(tmp_path, array_parallelism=1)
    q = Queue(p.runs_dir)
    runs = [make_run(tmp_path, root) for _ in range(3)]
    jobs = [q.add(RunDir(r), gpus=g) for r, g in zip(runs, (1, 1, 2))]
    ex = SlurmExecutor(p, q, grace=30)
    claimed = []
    for job in jobs:
        placement = ex.place(job, set())
        assert q.claim_launch(job.id, "+".join(placement.slots), "test")
        claimed.append(Claimed(job, RunDir(job.path), placement))
    handles = ex.launch(claimed)
    ids = [status(r)["slurm_job_id"] for r in runs]
    base = ids[0].split("_")[0]
    assert ids[:2] == [f"{base}_0", f"{base}_1"] and "_" not in ids[2]
    array = [f.read_text() for f in (p.runs_dir / ".slurm").glob("*_submission.sh")]
    assert len(array) == 1 and "#SBATCH --array=0-1%1" in array[0].splitlines()
    assert all(status(r)["state"] == "queued" for r in runs)  # only the trainer writes running
    for _ in range(5):
        assert [ex.poll(h) for h in handles] == [None, None, None]
    calls = (tmp_path / "sacct_calls").read_text().splitlines()
    assert len(calls) == 1 and f"-j {base}" in calls[0] and f"-j {ids[2]}" in calls[0]
    ex.asked -= S.SACCT_EVERY_S
    ex.poll(handles[0])
    assert len((tmp_path / "sacct_calls").read_text().splitlines()) == 2


def test_a_timed_out_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, make_synth):
    """The time-out signal (USR2, what submitit's local controller and Slurm send before the limit)
    reaches the job's task mid-training: the trainer stops at its step's end with last.pt, submitit's
    checkpoint hook requeues the job, and the requeued task resumes there and finishes — every step once."""
    from fmae.executors.slurm import _train

    assert hasattr(_train, "checkpoint")  # submitit requeues checkpointable functions only
    run = make_run(tmp_path, make_synth("bp4d"), epochs=2, log_every=1)
    S.submit_run(run, project(tmp_path, cpus_per_task=1, mem_gib=4), gpus=0, local=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # a few steps in
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if sum('"split": "train"' in line for line in lines) >= 2 or status(run)["state"] in ("done", "failed"):
            break
        time.sleep(0.2)
    assert status(run)["state"] == "running", status(run)
    task = status(run)["pid"]  # the task process, which runs _train
    os.kill(task, __import__("signal").SIGUSR2)
    assert wait_for_job(run, timeout=400) == "COMPLETED", list((run / "slurm").iterdir())
    st = status(run)
    assert st["state"] == "done" and st["requeues"] == 1 and st["pid"] != task, st
    log = (run / "train.log").read_text()
    assert "resumed from" in log and log.count(" done: ") == 1
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == st["total_steps"]  # no step twice, none missing at the end
    assert [r["epoch"] for r in recs if r["split"] == "test"] == [1, 2]


# --- a cancel goes through the executor, never to a group read from status.json ----------------------

def test_cancelling_a_job_on_the_local_slurm_cluster_leaves_the_scheduler_running(tmp_path, make_synth):
    """submitit's local controller is the scheduler's child in the scheduler's process group, so the
    trainer's status.json names that group: `fmae queue cancel` must stop the job through the executor
    (SIGTERM to the controller, forwarded to the task), and the scheduler lives on to record the end."""
    from conftest import run_fmae
    from fmae.config import default_config_text
    from fmae.queue import Queue

    text = default_config_text().replace('kind = "local"', 'kind = "slurm"').replace('cluster = "slurm"', 'cluster = "local"')
    (tmp_path / "fmae.toml").write_text(text, encoding="utf-8")
    root = make_synth("bp4d")
    try:
        added = run_fmae("queue", "add", "bp4d", "--root", root, "--labels", root / "labels.jsonl", "--model",
                         "vit_tiny", "--folds", "1", "--seeds", "0", "--epochs", "12", "--set", "input_size=32",
                         "--set", "num_workers=0", "--set", "batch_size=8", "--set", "log_every=1", cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        runs = tmp_path / "runs"
        (run,) = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
        deadline = time.time() + 240
        while time.time() < deadline and not (status(run)["state"] == "running" and (run / "metrics.jsonl").exists()):
            time.sleep(0.1)
        st = status(run)
        assert st["state"] == "running" and st["slurm_cluster"] == "local", st
        scheduler = int(json.loads((runs / "scheduler.json").read_text())["pid"])
        assert st["pgid"] == os.getpgid(scheduler)  # the hazard: the run's recorded group is the scheduler's

        cancelled = run_fmae("queue", "cancel", "1", cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"SIGTERM to local job {st['slurm_job_id']}" in cancelled.stdout, cancelled.stdout
        while time.time() < deadline and status(run)["state"] == "running":
            time.sleep(0.1)
        assert status(run)["state"] == "cancelled" and (run / "checkpoints" / "last.pt").is_file(), status(run)
        os.kill(scheduler, 0)  # still alive …
        q = Queue(runs)
        while time.time() < deadline and q.get(1).state != "cancelled":
            time.sleep(0.1)  # … and it records the job's end in the queue
        assert q.get(1).state == "cancelled"
        assert int(json.loads((runs / "scheduler.json").read_text())["pid"]) == scheduler
    finally:
        run_fmae("scheduler", "stop", cwd=tmp_path)
