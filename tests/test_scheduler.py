"""The scheduler with real processes: a matrix from `fmae queue add` to done run folders with no
further command, and the faults it must survive (kill -9 of itself or of a run, two at once, hang-up),
cancel and retry."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_fmae

TINY = ["--model", "vit_tiny", "--set", "input_size=32", "--set", "num_workers=0", "--set", "batch_size=8",
        "--set", "warmup_epochs=0"]


@pytest.fixture
def project(tmp_path):
    """A project folder with its own fmae.toml (CPU slots as the test needs) and runs folder."""
    assert run_fmae("init", tmp_path).returncode == 0

    def configure(cpu_slots: int) -> Path:
        assert run_fmae("config", "set", "compute.cpu_slots", cpu_slots, cwd=tmp_path).returncode == 0
        return tmp_path

    yield configure
    run_fmae("scheduler", "stop", cwd=tmp_path)  # never leave one behind


def statuses(runs: Path) -> dict[str, dict]:
    out = {}
    for run in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            out[run.name] = json.loads((run / "status.json").read_text())
        except (OSError, ValueError):
            pass
    return out


def wait_for(cond, timeout: float = 240, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def add(cwd: Path, root: Path, *extra: str):
    result = run_fmae("queue", "add", "bp4d", "--root", root, "--labels", root / "labels.jsonl", *TINY, *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def scheduler_pid(runs: Path) -> int:
    return int(json.loads((runs / "scheduler.json").read_text())["pid"])


def launches(run: Path) -> int:
    return (run / "train.log").read_text().count("lr = blr")


def test_a_matrix_runs_to_done_with_no_further_command_even_after_a_hang_up(project, make_synth):
    """From `fmae queue add` in a terminal to four done runs on two CPU slots; the terminal hangs up."""
    cwd = project(2)
    root = make_synth("bp4d")
    args = [sys.executable, "-m", "fmae", "queue", "add", "bp4d", "--root", str(root), "--labels",
            str(root / "labels.jsonl"), *TINY, "--folds", "1,2", "--seeds", "0,1", "--epochs", "1"]
    # A "terminal": its own session whose shell queues the work and then waits, like a user would.
    terminal = subprocess.Popen(["bash", "-c", " ".join(map(_quote, args)) + " && sleep 120"], cwd=cwd,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = cwd / "runs"
    wait_for(lambda: runs.exists() and any(s["state"] == "running" for s in statuses(runs).values()), what="running")
    os.killpg(terminal.pid, signal.SIGHUP)
    terminal.wait(timeout=30)
    done = wait_for(lambda: (s := statuses(runs)) and len(s) == 4 and all(v["state"] == "done" for v in s.values())
                    and s, what="4 done runs")
    for name in done:
        assert (runs / name / "checkpoints" / "last.pt").is_file() and launches(runs / name) == 1
    assert (runs / "scheduler.log").read_text().count("launched job") == 4


def test_kill_9_of_the_scheduler_and_of_a_run(project, make_synth):
    """kill -9 of the scheduler: the run goes on, a restarted scheduler adopts it and starts the rest,
    nothing twice. kill -9 of a run: it ends failed (process vanished), the next one starts."""
    cwd = project(1)
    add(cwd, make_synth("bp4d"), "--folds", "1,2,3", "--seeds", "0", "--epochs", "6")
    runs = cwd / "runs"
    first = wait_for(lambda: [(n, s) for n, s in statuses(runs).items() if s["state"] == "running" and s.get("pid")],
                     what="a running run")[0]
    os.kill(scheduler_pid(runs), signal.SIGKILL)
    time.sleep(0.5)
    os.kill(first[1]["pid"], 0)  # the run outlives its scheduler
    assert run_fmae("scheduler", "start", cwd=cwd).returncode == 0
    second = wait_for(lambda: [(n, s) for n, s in statuses(runs).items()
                               if n != first[0] and s["state"] == "running" and s.get("pid")], what="the next run")[0]
    wait_for(lambda: launches(runs / second[0]), what="it trains")
    os.kill(second[1]["pid"], signal.SIGKILL)
    final = wait_for(lambda: (s := statuses(runs)) and all(v["state"] in ("done", "failed") for v in s.values()) and s,
                     what="all ended")
    assert final[first[0]]["state"] == "done" and launches(runs / first[0]) == 1  # adopted, not relaunched
    assert final[second[0]]["state"] == "failed"
    assert "process vanished" in final[second[0]]["error"] and "signal 9" in final[second[0]]["error"]
    third = [n for n in final if n not in (first[0], second[0])]
    assert [final[n]["state"] for n in third] == ["done"] and launches(runs / third[0]) == 1
    assert "adopted job" in (runs / "scheduler.log").read_text()


def test_two_schedulers_started_at_once_one_runs(tmp_path):
    cmd = [sys.executable, "-m", "fmae", "scheduler", "run", "--runs-dir", str(tmp_path), "--idle-exit", "3"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    loser = results[[p.returncode for p in procs].index(2)][1]
    assert "a scheduler already runs" in loser and "pid" in loser


def test_cancel_a_running_run_then_retry_resumes_it(project, make_synth):
    cwd = project(1)
    add(cwd, make_synth("bp4d"), "--folds", "1", "--seeds", "0", "--epochs", "12", "--set", "log_every=1")
    runs = cwd / "runs"
    name = wait_for(lambda: [n for n, s in statuses(runs).items() if s["state"] == "running"], what="running")[0]
    wait_for(lambda: (runs / name / "metrics.jsonl").exists(), what="a first step")
    jobs = json.loads(run_fmae("queue", "ls", "--json", cwd=cwd).stdout)
    job_id = str(jobs[0]["id"])
    assert run_fmae("queue", "cancel", job_id, cwd=cwd).returncode == 0
    status = wait_for(lambda: (s := statuses(runs)[name])["state"] == "cancelled" and s, what="cancelled")
    assert (runs / name / "checkpoints" / "last.pt").is_file(), status
    # Retrying at once is allowed: the run folder says cancelled even before the scheduler has seen it.
    retried = run_fmae("queue", "retry", job_id, cwd=cwd)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: statuses(runs)[name]["state"] == "done", what="done after retry")
    tests = [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in tests if r["split"] == "test"] == list(range(1, 13))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


def test_executor_slurm_goes_through_submitit(project, make_synth):
    """executor.kind = "slurm" with submitit's local cluster: the scheduler hands the run to submitit
    and the state comes back from status.json (the same code path as a real cluster, minus sbatch)."""
    cwd = project(1)
    for key, value in (("executor.kind", "slurm"), ("executor.slurm.cluster", "local")):
        assert run_fmae("config", "set", key, value, cwd=cwd).returncode == 0
    add(cwd, make_synth("bp4d"), "--folds", "1", "--seeds", "0", "--epochs", "1")
    runs = cwd / "runs"
    final = wait_for(lambda: (s := statuses(runs)) and all(v["state"] in ("done", "failed") for v in s.values()) and s,
                     what="the slurm run to end")
    (name, status), = final.items()
    assert status["state"] == "done", status
    assert status["executor"] == "slurm" and status["slurm_cluster"] == "local" and status["slurm_job_id"]
    assert (runs / name / "slurm").is_dir()
    assert "submitted job 1" in (runs / "scheduler.log").read_text()


# --- issue 22: never twice, the right pid, it comes back ----------------------------------------------

def trainers_of(run: Path) -> list[int]:
    """Live (non-zombie) `fmae exec RUN` trainers."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = [a.decode() for a in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0") if a]
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _, _, session = stat[stat.rfind(")") + 2:].split()[:4]
        if state != "Z" and "exec" in args and str(run) in args:
            found[int(entry)] = int(session)
    # A trainer leads its own session (the scheduler starts it so); its DataLoader workers do not.
    return [pid for pid, session in found.items() if session == pid]


def sample_trainers(run: Path, until, timeout: float = 240) -> int:
    """The most trainers of `run` seen alive at once (sampled every 0.05 s) until `until()` holds."""
    most, deadline = 0, time.time() + timeout
    while time.time() < deadline:
        most = max(most, len(trainers_of(run)))
        if until():
            return most
        time.sleep(0.05)
    raise AssertionError(f"timed out; most trainers at once so far: {most}")


def assert_ran_once(run: Path) -> None:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps, steps  # strictly increasing: no attempt's steps twice
    assert (run / "train.log").read_text().count(" done: ") == 1


def test_a_launch_caught_by_a_slow_writer_and_a_kill_9_runs_once(project, make_synth):
    """The race of issue 22: a slow writer holds the queue's write lock, so the scheduler's claim blocks
    in the middle of a launch; kill -9 of the scheduler then. The next scheduler launches the run once."""
    cwd = project(1)
    add(cwd, make_synth("bp4d"), "--folds", "1", "--seeds", "0", "--epochs", "2", "--set", "log_every=1",
        "--no-scheduler")
    runs = cwd / "runs"
    (name,) = statuses(runs)
    writer = sqlite3.connect(runs / "queue.sqlite", timeout=30, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    started = run_fmae("scheduler", "start", cwd=cwd)
    assert started.returncode == 0, started.stderr
    time.sleep(3)  # the scheduler is blocked on the claim (before this fix: after spawning the trainer)
    os.kill(scheduler_pid(runs), signal.SIGKILL)
    time.sleep(0.5)
    writer.execute("ROLLBACK")
    writer.close()
    assert run_fmae("scheduler", "start", cwd=cwd).returncode == 0
    most = sample_trainers(runs / name, lambda: statuses(runs)[name]["state"] in ("done", "failed"))
    assert statuses(runs)[name]["state"] == "done", statuses(runs)[name]
    assert most == 1
    assert_ran_once(runs / name)


def test_a_trainer_whose_scheduler_died_mid_launch_is_adopted_not_run_again(project, make_synth):
    """A scheduler killed after claiming a job (launching) and spawning its trainer, before recording
    the pid: the next scheduler finds the trainer by its run-folder lock and follows it. A second
    `fmae exec` of the same run exits at once (code 3) with one line, touching nothing."""
    from fmae.queue import Queue

    cwd = project(1)
    add(cwd, make_synth("bp4d"), "--folds", "1", "--seeds", "0", "--epochs", "80", "--set", "log_every=1",
        "--no-scheduler")
    runs = cwd / "runs"
    (name,) = statuses(runs)
    q = Queue(runs)
    (job,) = q.jobs()
    assert q.claim_launch(job.id, "cpu0", "999999@gone")
    orphan = subprocess.Popen([sys.executable, "-m", "fmae", "exec", str(runs / name)], cwd=runs / name,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (runs / name / "metrics.jsonl").exists(), what="the orphan trains")
    # Paused while the second exec looks (it keeps its lock), so a quiet machine cannot finish the run
    # first. Resumed before the scheduler starts: a paused trainer may hold status.json's lock, which
    # adoption takes; the 80 epochs leave it time to adopt a live trainer.
    os.killpg(orphan.pid, signal.SIGSTOP)
    try:
        second = run_fmae("exec", runs / name, cwd=cwd)
    finally:
        os.killpg(orphan.pid, signal.SIGCONT)
    assert second.returncode == 3, second.stderr
    assert f"already being trained by pid {orphan.pid}" in second.stderr and "Traceback" not in second.stderr
    assert run_fmae("scheduler", "start", cwd=cwd).returncode == 0
    most = sample_trainers(runs / name, lambda: q.get(job.id).state in ("done", "failed"))
    assert statuses(runs)[name]["state"] == "done", statuses(runs)[name]
    orphan.wait(timeout=60)
    assert most == 1 and orphan.returncode == 0
    assert_ran_once(runs / name)
    assert "adopted job" in (runs / "scheduler.log").read_text()


def test_scheduler_start_prints_the_pid_that_holds_the_lock(tmp_path):
    """After a kill -9, `scheduler start` names the new holder, never the one just killed."""
    runs = tmp_path / "runs"
    for _ in range(4):
        started = run_fmae("scheduler", "start", "--runs-dir", runs, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        printed = int(started.stdout.split("pid ")[1].split(",")[0])
        args = Path(f"/proc/{printed}/cmdline").read_bytes().split(b"\0")
        assert b"scheduler" in args and b"run" in args, args  # the live scheduler, not a stale pid
        assert scheduler_pid(runs) == printed
        os.kill(printed, signal.SIGKILL)


def test_reading_the_queue_brings_a_crashed_scheduler_back(project, make_synth):
    cwd = project(1)
    add(cwd, make_synth("bp4d"), "--folds", "1", "--seeds", "0", "--epochs", "2", "--no-scheduler")
    runs = cwd / "runs"
    quiet = run_fmae("queue", "ls", cwd=cwd, env={"FMAE_NO_AUTOSTART": "1"})
    assert "FMAE_NO_AUTOSTART is set: not started" in quiet.stderr and not (runs / "scheduler.json").exists()
    listed = run_fmae("queue", "ls", "--json", cwd=cwd)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["id"] == 1  # stdout stays JSON
    assert "no scheduler was running: scheduler started (pid" in listed.stderr
    first = scheduler_pid(runs)
    os.kill(first, signal.SIGKILL)
    status = run_fmae("scheduler", "status", cwd=cwd)
    assert "scheduler started" in status.stdout and f"pid {first} " not in status.stdout.split("scheduler:")[1]
    (name,) = statuses(runs)
    wait_for(lambda: statuses(runs)[name]["state"] == "done", what="done")
    unit = run_fmae("scheduler", "unit", cwd=cwd)
    assert unit.returncode == 0 and "[Service]" in unit.stdout and "Restart=always" in unit.stdout
    exec_start = next(line for line in unit.stdout.splitlines() if line.startswith("ExecStart="))
    assert "scheduler run --runs-dir" in exec_start and str(runs) in exec_start and "--idle-exit inf" in exec_start


def test_a_zombie_trainer_is_dead_and_a_folder_that_says_done_is_believed(tmp_path):
    """Reconciliation without training: job 1's recorded process is a zombie (exited, never reaped — as
    under a PID 1 that never reaps): failed at once, not adopted for ever. Job 2's folder says done while
    a process that looks like its trainer still lives: the folder is believed, the row ends done."""
    from fmae.queue import Queue
    from fmae.runs import RunDir, make_run_id

    runs = tmp_path / "runs"
    q = Queue(runs)
    cfg = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 0.0, "model": "vit_tiny"}
    zombie_run, done_run = (RunDir.create(runs, make_run_id("bp4d", "vit_tiny", s, fold=1), {**cfg, "seed": s},
                                          {"command": ["test"]}) for s in (0, 1))
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    looks_alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "exec", str(done_run.path)])
    try:
        wait_for(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[-1].split()[0] == "Z", 30, "zombie")
        for run, pid in ((zombie_run, zombie.pid), (done_run, looks_alive.pid)):
            job = q.add(run)
            assert q.claim(job.id, "cpu0", pid, pid)
            run.mark_running(pid=pid, pgid=pid)
        done_run.mark_ended("done", exit_code=0)
        result = subprocess.run([sys.executable, "-m", "fmae", "scheduler", "run", "--runs-dir", str(runs),
                                 "--idle-exit", "1"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        first, second = q.jobs()
        assert (first.state, second.state) == ("failed", "done")
        assert "process vanished" in first.error and "adopted" not in result.stderr
        assert looks_alive.poll() is None  # believed the folder; signalled nobody
    finally:
        looks_alive.kill()
        looks_alive.wait()
        zombie.wait()


def test_a_queued_run_whose_folder_was_deleted_fails_in_one_line_and_the_next_goes_on(tmp_path):
    """`rm -r runs/<id>` of a queued run: that job fails naming the folder; the scheduler keeps going
    (job 2, whose folder says done, is recorded done) and exits when idle, not on an exception."""
    import shutil

    from fmae.queue import Queue
    from fmae.runs import RunDir, make_run_id

    runs = tmp_path / "runs"
    q = Queue(runs)
    cfg = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 0.0, "model": "vit_tiny"}
    gone, done = (RunDir.create(runs, make_run_id("bp4d", "vit_tiny", s, fold=1), {**cfg, "seed": s},
                                {"command": ["test"]}) for s in (0, 1))
    for run in (gone, done):
        q.add(run)
    shutil.rmtree(gone.path)
    done.mark_ended("done", exit_code=0)
    result = subprocess.run([sys.executable, "-m", "fmae", "scheduler", "run", "--runs-dir", str(runs),
                             "--idle-exit", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    first, second = q.jobs()
    assert (first.state, first.error) == ("failed", f"run folder {gone.path} is gone")
    assert second.state == "done"
    assert not gone.path.exists()  # nothing made again in its place


def test_the_notify_command_gets_each_end_and_a_failing_or_hanging_one_stalls_nothing(tmp_path):
    """[scheduler] notify: a real script gets done / failed / nonfinite_loss with the run as arguments
    (an argument list: a message with spaces and a dash stays one argument); a cancel notifies nobody.
    The script fails for `failed` and hangs for `nonfinite_loss`: the scheduler exits on time anyway,
    and its log says the one failed and the other was killed after notify_timeout_s."""
    from fmae.queue import Queue
    from fmae.runs import RunDir, make_run_id

    got = tmp_path / "got.jsonl"
    script = tmp_path / "notify.py"
    script.write_text(f"#!{sys.executable}\nimport json, sys, time\n"
                      f"open({str(got)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                      "if sys.argv[1] == 'failed': sys.exit(3)\n"
                      "if sys.argv[1] == 'nonfinite_loss': time.sleep(120)\n")
    script.chmod(0o755)
    (tmp_path / "fmae.toml").write_text(f'runs_dir = "runs"\n[scheduler]\nnotify = [{json.dumps(str(script))}, '
                                        '"{event}", "{run}", "{message}"]\nnotify_timeout_s = 1\n')
    runs = tmp_path / "runs"
    q = Queue(runs)
    nan = "loss is nan at epoch 1, step 2 — lower blr (--set blr=…) or check the data"
    ends = [("done", None), ("failed", nan), ("failed", "boom"), ("cancelled", "cancelled")]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    cfg = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 0.0, "model": "vit_tiny"}
    ids = []
    for seed, (state, error) in enumerate(ends):
        run = RunDir.create(runs, make_run_id("bp4d", "vit_tiny", seed, fold=1), {**cfg, "seed": seed},
                            {"command": ["test"]})
        job = q.add(run)
        assert q.claim(job.id, "cpu0", gone.pid, gone.pid)
        run.mark_ended(state, exit_code=0 if state == "done" else 1, error=error)
        ids.append(run.id)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fmae", "scheduler", "run", "--config", str(tmp_path / "fmae.toml"),
                             "--idle-exit", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 60  # it never waited for the hanging command
    assert [j.state for j in q.jobs()] == ["done", "failed", "failed", "cancelled"]
    log = runs / "scheduler.log"
    wait_for(lambda: "killed" in log.read_text() and "exited with code 3" in log.read_text(), 60, "the watchdog's lines")
    calls = sorted(json.loads(line) for line in got.read_text().splitlines())
    assert calls == sorted([["done", ids[0], "done"], ["nonfinite_loss", ids[1], nan], ["failed", ids[2], "boom"]])
    text = log.read_text()
    assert f"notify (failed {ids[2]}): {script} exited with code 3" in text
    assert f"notify (nonfinite_loss {ids[1]}): {script} still ran after 1 s (notify_timeout_s): killed" in text
    # The hanging command is gone, and so is its watchdog (`python -m fmae.notify … SCRIPT`, which names the
    # script too): it writes "killed" just before it exits, so it may still be leaving when that is read.
    wait_for(lambda: not [p for p in os.listdir("/proc") if p.isdigit() and _runs(p, script)], 10,
             "no process of the notify command left")


def _runs(pid: str, script: Path) -> bool:
    try:
        return str(script).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_a_notify_command_must_be_an_argument_list(tmp_path):
    from fmae.config import parse_project
    from fmae.errors import FmaeError

    for text, needle in (('notify = "notify-send done"', "scheduler.notify"),
                         ('notify = ["", "x"]', "list of non-empty strings"),
                         ("notify_timeout_s = 0", "more than 0")):
        with pytest.raises(FmaeError, match=needle) as e:
            parse_project(f"[scheduler]\n{text}\n", "fmae.toml", tmp_path)
        assert str(e.value).startswith("fmae.toml:2")  # the line to fix
    ok = parse_project('[scheduler]\nnotify = ["notify-send", "{event}"]\n', "fmae.toml", tmp_path)
    assert ok.notify == ("notify-send", "{event}") and ok.notify_timeout_s == 30
