"""Faults with real processes: kill -9 in the middle of a write, a disk that fills up, a run that runs out
of memory, and two app instances plus the CLI on one runs folder. What must hold each time: files are the
old or the new version (never half of each), nothing written before is lost, a failed run says why, the
scheduler goes on, nothing is launched twice.

Faults are injected from outside fmae's code: a process is killed (SIGKILL) while it is paused inside a
write, a file size limit (RLIMIT_FSIZE, what a full disk looks like to a writer) is set on a process, or
an out-of-memory error is raised from a `sitecustomize` hook that only the victim run's process loads.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_fmae
from fmae.run_lock import trainer_alive
from fmae.runs import RunDir, read_metrics

TINY = {"model": "vit_tiny", "input_size": 32, "num_workers": 0, "batch_size": 8, "warmup_epochs": 0,
        "log_every": 1}
TINY_ARGS = ["--model", "vit_tiny", "--set", "input_size=32", "--set", "num_workers=0", "--set", "batch_size=8",
             "--set", "warmup_epochs=0", "--set", "log_every=1"]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    return {**base, "COLUMNS": "200", "NO_COLOR": "1", **extra}


def python(code: str, *args: str, cwd: Path | None = None, **popen) -> subprocess.Popen:
    """A child Python process running `code` (argument list, no shell)."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=popen.pop("env", env()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for(cond, timeout: float = 120, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp"))


# --- kill -9 while status.json / summary.json are being replaced -------------------------------------

# Pauses the process in the middle of writing the new version of a file (half its bytes are in the temp
# file), after saying so in a marker file: the parent then kills it with SIGKILL.
PAUSE_IN_WRITE = r"""
import os, sys, time
from pathlib import Path
from fmae.runs import RunDir
run, which, marker = RunDir(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
real_fdopen = os.fdopen

class Half:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): return self.f.__exit__(*exc)
    def fileno(self): return self.f.fileno()
    def flush(self): self.f.flush()
    def write(self, data):
        self.f.write(data[: len(data) // 2]); self.f.flush()
        # written then renamed: the test reads the marker as soon as it exists
        marker.with_suffix(".tmp").write_text(os.readlink(f"/proc/self/fd/{self.f.fileno()}"))
        marker.with_suffix(".tmp").rename(marker)
        time.sleep(300)

os.fdopen = lambda fd, *a, **k: Half(real_fdopen(fd, *a, **k))
if which == "status":
    run.update_status(state="failed", error="the new version " + "n" * 4000)
else:
    run.write_summary({"version": "new", "pad": "n" * 4000})
"""

# Rewrites status.json and summary.json as fast as it can; version n carries n in every field, so a file
# made of two versions cannot pass for one.
WRITE_FOREVER = r"""
import sys
from fmae.runs import RunDir
run = RunDir(sys.argv[1])
n = 0
while True:
    n += 1
    run.update_status(epoch=n, step=n, error=str(n) * (200 + n % 3000))
    run.write_summary({"version": n, "pad": str(n) * (200 + n % 3000)})
"""


def consistent(run: RunDir) -> tuple[int, int]:
    status, summary = run.read_status(), run.read_summary()
    n, m = status["epoch"], summary["version"]
    assert status["step"] == n and status["error"] == str(n) * (200 + n % 3000) and status["state"] == "running"
    assert summary["pad"] == str(m) * (200 + m % 3000)
    return n, m


def test_kill_9_during_status_and_summary_writes_leaves_the_old_or_the_new_file(tmp_path):
    run = RunDir.create(tmp_path / "runs", "20261128-041233-bp4d-f1-s0-l0-vit_tiny-7c2a", {"task": "au"}, {})
    run.mark_running(pid=1, host="h")
    run.write_summary({"version": "old", "pad": "o" * 10})
    old = {name: (run.path / name).read_bytes() for name in ("status.json", "summary.json")}

    # 1. Killed with half of the new version written: the file is the old one, byte for byte.
    for which, name in (("status", "status.json"), ("summary", "summary.json")):
        marker = tmp_path / f"{which}.paused"
        proc = python(PAUSE_IN_WRITE, run.path, which, marker)
        wait_for(marker.exists, what=f"the {name} write to start")
        half = Path(marker.read_text())
        assert half.parent == run.path and half.name.startswith(f".{name}.") and half.stat().st_size > 1000
        kill9(proc)
        assert (run.path / name).read_bytes() == old[name]
    assert run.read_status()["state"] == "running" and run.read_summary()["version"] == "old"
    for leftover in temps(run.path):  # hidden, ignored by every reader; the next attempt's writes go on
        leftover.unlink()
    run.update_status(heartbeat="x")

    # 2. Killed at random moments of a write loop: each file is always one whole version.
    rng = random.Random(9)
    versions = []
    for _ in range(6):
        last = run.read_status().get("epoch")
        proc = python(WRITE_FOREVER, run.path)
        wait_for(lambda: run.read_status().get("epoch") != last, what="the first write")
        time.sleep(rng.uniform(0.0, 0.15))
        kill9(proc)
        versions.append(consistent(run))
    assert len({v for v, _ in versions}) > 1  # the loop did get killed at different places


# --- a full disk, for the torch-free writers and the CLI ------------------------------------------------

FULL_DISK = r"""
import json, resource, sys
from fmae.runs import RunDir
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # no write may grow a file past this size
run = RunDir(sys.argv[1])
failed = []
for name, write in (("status", lambda: run.update_status(error="x" * 2 * limit)),
                    ("summary", lambda: run.write_summary({"pad": "x" * 2 * limit})),
                    ("metrics", lambda: run.append_metrics({"split": "train", "step": 3, "pad": "x" * 2 * limit}))):
    try:
        write()
    except OSError as e:
        failed.append([name, e.errno])
print(json.dumps(failed))
"""


def test_a_full_disk_fails_the_write_and_keeps_what_was_there(tmp_path):
    import errno

    run = RunDir.create(tmp_path / "runs", "20261128-041233-bp4d-f1-s0-l0-vit_tiny-7c2a", {"task": "au"}, {})
    run.write_summary({"version": 1})
    for step in (1, 2):
        run.append_metrics({"split": "train", "epoch": 1, "step": step, "loss": 0.5})
    before = {n: (run.path / n).read_bytes() for n in ("run.toml", "status.json", "summary.json")}
    metrics_before = run.metrics_path.read_bytes()
    limit = 64 * 1024
    proc = python(FULL_DISK, run.path, limit)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out) == [["status", errno.EFBIG], ["summary", errno.EFBIG], ["metrics", errno.EFBIG]]
    assert before == {n: (run.path / n).read_bytes() for n in before}
    assert not temps(run.path)
    # The metrics line stopped at the limit: readers skip the fragment, the next writer starts afresh.
    assert run.metrics_path.read_bytes().startswith(metrics_before) and run.metrics_path.stat().st_size == limit
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2]
    RunDir(run.path).append_metrics({"split": "train", "epoch": 1, "step": 3, "loss": 0.4})
    after = run.metrics_path.read_bytes()
    assert after.startswith(metrics_before) and after[len(metrics_before):].count(b"\n") == 1
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2, 3]

    # The CLI: one line naming the file and what to do; fmae.toml as it was.
    config = tmp_path / "fmae.toml"
    config.write_text('runs_dir = "runs"\n[compute]\ncpu_slots = 1\n')
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)); "
            "sys.argv = ['fmae', 'config', 'set', 'compute.cpu_slots', '2', '--config', sys.argv[1]]; "
            "from fmae.cli import main; main()")
    proc = python(code, config, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert str(config) in line and "File too large" in line and "free disk space" in line
    assert config.read_text() == 'runs_dir = "runs"\n[compute]\ncpu_slots = 1\n' and not temps(tmp_path)


# --- one runs folder under stress: two apps and the CLI at once, out of memory, kill -9, a full disk ------

# Loaded by every Python process of the test (PYTHONPATH) but acting only in the run process whose
# working folder — the scheduler starts each run in its run folder — matches:
#   FMAE_FAULT_OOM:   its training raises CUDA's out-of-memory error;
#   FMAE_FAULT_PAUSE: it pauses inside its second write of checkpoints/last.pt (the end of epoch 2), with
#                     part of the new file written, after naming that temp file in FMAE_FAULT_MARKER.
SITECUSTOMIZE = r"""
import os
_here = os.path.basename(os.getcwd())
if os.environ.get("FMAE_FAULT_OOM") and os.environ["FMAE_FAULT_OOM"] in _here:
    import torch
    from fmae.train import trainer

    def _fit(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                          "capacity of 79.11 GiB of which 3.12 GiB is free (injected by test_faults)")

    trainer.Trainer._fit = _fit

if os.environ.get("FMAE_FAULT_PAUSE") and os.environ["FMAE_FAULT_PAUSE"] in _here:
    import time
    import torch

    _real_save, _saves = torch.save, []

    class _Paused:
        def __init__(self, f, name):
            self.f, self.name, self.n = f, name, 0
        def write(self, data):
            self.n += self.f.write(data)
            if self.n > 256 * 1024:
                self.f.flush()
                with open(os.environ["FMAE_FAULT_MARKER"], "w") as m:
                    m.write(self.name)
                time.sleep(300)
            return len(data)
        def flush(self):
            self.f.flush()

    def _save(obj, f, *args, **kwargs):
        inner = getattr(f, "f", f)  # save_checkpoint hands torch a thin wrapper around the temp file
        name = os.readlink(f"/proc/self/fd/{inner.fileno()}") if hasattr(inner, "fileno") else ""
        if os.path.basename(name).startswith(".last.pt."):
            _saves.append(name)
            if len(_saves) == 2:
                f = _Paused(f, name)
        return _real_save(obj, f, *args, **kwargs)

    torch.save = _save
"""

# What the app's Launch screen does (fmae.queue_ops, the code path of `fmae queue add`), in its own process.
APP = r"""
import json, sys, time
from pathlib import Path
from fmae.config import load_project
from fmae.queue_ops import add_matrix, start_scheduler
go, root, cli = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
Path(sys.argv[4]).touch()  # ready: imported, waiting at the line
while not go.exists():
    time.sleep(0.002)
project = load_project()
plan, added = add_matrix(project, "bp4d", folds=[1], seeds=[0, 1], cli=cli, root=root, labels=root / "labels.jsonl")
print(json.dumps({"added": [j.run_id for j in added], "scheduler": start_scheduler(project)}))
"""

WITH_FILE_SIZE_LIMIT = r"""
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # what a full disk looks like to a writer
sys.argv = ["fmae", "exec", sys.argv[2]]
from fmae.cli import main
main()
"""


@pytest.fixture
def project(tmp_path):
    from fmae.config import default_config_text, update_config

    (tmp_path / "fmae.toml").write_text(default_config_text())
    update_config(tmp_path / "fmae.toml", {"compute.cpu_slots": 1})
    yield tmp_path
    run_fmae("scheduler", "stop", cwd=tmp_path)  # never leave one behind


def test_one_runs_folder_under_stress(project, make_synth, tmp_path):
    """1. Two app processes and `fmae queue add` add the same 2-run matrix at the same moment: 2 runs, one
    scheduler, each run launched once. 2. The first run runs out of memory: it ends failed, saying so and
    what to do; the scheduler goes on. 3. The second is killed with SIGKILL inside a checkpoint write: the
    previous checkpoint is whole. 4. It is resumed on a full disk: it resumes from that checkpoint, then
    fails saying why, and what was written before is unchanged."""
    from fmae.models.checkpoint import read_checkpoint
    from fmae.queue import Queue

    root = make_synth("bp4d")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "paused"
    fault_env = env(PYTHONPATH=os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
                    FMAE_FAULT_OOM="-s0-", FMAE_FAULT_PAUSE="-s1-", FMAE_FAULT_MARKER=str(marker))

    # 1. Three clients at once.
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    apps = [python(APP, go, root, json.dumps({**TINY, "epochs": 2}), r, cwd=project, env=fault_env) for r in ready]
    wait_for(lambda: all(r.exists() for r in ready), what="the apps to start")
    go.touch()
    cli = subprocess.Popen([sys.executable, "-m", "fmae", "queue", "add", "bp4d", "--folds", "1", "--seeds", "0,1",
                            "--root", str(root), "--labels", str(root / "labels.jsonl"), "--epochs", "2", *TINY_ARGS],
                           cwd=project, env=fault_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answers = [p.communicate(timeout=120) for p in (*apps, cli)]
    assert [p.returncode for p in (*apps, cli)] == [0, 0, 0], answers
    added = [json.loads(out)["added"] for out, _ in answers[:2]] + [
        [line.split(": ")[1] for line in answers[2][0].splitlines() if line.startswith("added job")]]
    assert sorted(len(a) for a in added) == [0, 0, 2], added  # one of the three added both cells
    runs = project / "runs"
    folders = sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == sorted(sum(added, []))
    oom = RunDir(runs / next(n for n in folders if "-s0-" in n))
    victim = RunDir(runs / next(n for n in folders if "-s1-" in n))
    queue = Queue(runs)

    def job(run: RunDir):
        return queue.get_run(run.id)

    # 2. Out of memory in the first run (job 1: cells are added seed by seed, dispatched by id).
    wait_for(lambda: job(oom).state == "failed", timeout=240, what="the first run to fail")
    status = oom.read_status()
    assert status["state"] == "failed" and status["exit_code"] == 1 and len(status["error"]) <= 300
    assert status["error"].startswith("OutOfMemoryError: CUDA out of memory") and "lower --batch-size" in status["error"]
    assert job(oom).error == status["error"]

    # 3. The scheduler went on: the second run trains, and is killed inside its end-of-epoch-2 checkpoint.
    wait_for(marker.exists, timeout=240, what="the second run's second last.pt write")
    pgid = victim.read_status()["pgid"]
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: job(victim).state == "failed", what="the scheduler to see the kill")
    assert "process vanished (killed by signal 9)" in victim.read_status()["error"]
    half = Path(marker.read_text())
    assert half.parent == victim.checkpoints and half.exists() and 0 < half.stat().st_size < 5 * 2**20
    ckpt = victim.checkpoints / "last.pt"
    ck = read_checkpoint(ckpt)
    assert (ck["epoch"], ck["batch"], ck["step"]) == (1, 0, 4)  # the epoch-1 checkpoint, whole
    assert [r["epoch"] for r in read_metrics(victim.metrics_path) if r["split"] == "test"] == [1, 2]

    log = (runs / "scheduler.log").read_text()
    assert log.count(" holds ") == 1  # one scheduler ever held the runs folder
    launched = [line for line in log.splitlines() if "launched job" in line]
    assert len(launched) == 2 and oom.id in launched[0] and victim.id in launched[1]
    assert log.index(f"({oom.id}) ended: failed") < log.index(launched[1])
    for run in (oom, victim):
        assert run.log_path.read_text().count("lr = blr") == 1  # each launched once

    # 4. Resume on a "full disk" (no file may grow past 1 MiB; a checkpoint is bigger): it trains epoch 2
    #    again from the epoch-1 checkpoint, then fails saying why; the earlier files are unchanged.
    kept = {p: p.read_bytes() for p in (ckpt, victim.checkpoints / "best.pt", victim.run_toml)}
    proc = python(WITH_FILE_SIZE_LIMIT, 2**20, victim.path, cwd=tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    status = victim.read_status()
    assert status["state"] == "failed" and status["exit_code"] == 1
    for text in (line, status["error"]):
        assert "File too large" in text and ".pt" in text and "free disk space, then retry the run" in text
    assert kept == {p: p.read_bytes() for p in kept}
    victim.read_summary()  # whole, whichever version
    text = victim.log_path.read_text()
    assert "resumed from" in text and "epoch 2, batch 0, step 4" in text
    assert "Traceback" in text  # the details, for a bug report, are in train.log
    # What the killed process logged after its checkpoint was dropped and written again: each record once.
    records = read_metrics(victim.metrics_path)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 9))
    assert [r["epoch"] for r in records if r["split"] == "test"] == [1, 2]
    assert set(temps(victim.path)) <= {half}  # a later last.pt save deletes the killed writer's half file


# --- a bad image never hangs a run (issue 14.3) --------------------------------------------------------

def damage_jpeg(path: Path) -> None:
    """Header bytes overwritten, the end marker (FFD9) intact: the file looks whole from outside."""
    data = bytearray(path.read_bytes())
    data[2:120] = bytes(range(7, 125))
    assert data[-2:] == b"\xff\xd9"
    path.write_bytes(bytes(data))


def test_a_bad_image_in_a_loader_worker_fails_the_run_and_the_next_job_starts(project, make_synth, tmp_path):
    """A train image is damaged after the run's pre-flight (as a copy being replaced under a run would
    be): the DataLoader worker (num_workers=1) fails to decode it. The run ends failed with one line naming
    the image and what to do, its process exits within seconds with a non-zero code, and the scheduler's
    slot goes to the next queued job, which ends done."""
    import shutil

    root = tmp_path / "data"  # the first run's copy, damaged under it; the next job reads the intact one
    shutil.copytree(make_synth("bp4d"), root)
    common = ["queue", "add", "bp4d", "--folds", "1", *TINY_ARGS, "--set", "num_workers=1", "--gpus-per-run", "0",
              "--no-scheduler"]
    intact = make_synth("bp4d")
    assert run_fmae(*common, "--root", root, "--labels", root / "labels.jsonl", "--seeds", "0", "--epochs", "6",
                    cwd=project).returncode == 0
    assert run_fmae(*common, "--root", intact, "--labels", intact / "labels.jsonl", "--seeds", "1", "--epochs", "1",
                    cwd=project).returncode == 0
    runs = project / "runs"
    first, second = sorted(p for p in runs.iterdir() if p.is_dir())
    assert run_fmae("scheduler", "start", cwd=project).returncode == 0
    wait_for(lambda: (first / "metrics.jsonl").exists(), what="the first run trains")
    train = [json.loads(line)["img_path"] for line in (root / "fold1_train.jsonl").read_text().splitlines()]
    damaged = [root / p for p in train[:6]]
    for path in damaged:
        damage_jpeg(path)
    status = wait_for(lambda: (s := json.loads((first / "status.json").read_text()))["state"] == "failed" and s,
                      what="the run fails")
    error = status["error"]
    assert any(str(p) in error for p in damaged) and "data check" in error and "\n" not in error, error
    assert status["exit_code"] not in (0, None)
    ended = time.time()
    wait_for(lambda: not trainer_alive(first, status["pid"]), timeout=20, what="the trainer exits")
    assert time.time() - ended < 20
    assert "Traceback" not in (first / "train.log").read_text().split(" ERROR ")[-1]
    from fmae.queue import Queue

    wait_for(lambda: [j.state for j in Queue(runs).jobs()] == ["failed", "done"], timeout=240,
             what="the next job runs to done")
    assert json.loads((second / "status.json").read_text())["state"] == "done"
