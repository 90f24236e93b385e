"""The Queue screen's order, times and words over a real queue.sqlite and run folders (no training): running
first, then queued by priority, then finished (latest first); elapsed and ETA from the step rate; progress
followed as status.json changes; "needs a CPU slot" only for queued jobs. The GPUs screen without a GPU:
the CPU, and each running job's process. A test process holds the scheduler's lock, so the app starts no
scheduler of its own and the jobs stay where the test put them."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fmae.config import default_config_text
from fmae.queue import Queue
from fmae.queue_ops import cancel_job, queue_rows, timing, work_order
from fmae.runs import RunDir, make_run_id
from fmae_tui.app import create_app
from fmae_tui.screens.gpus import GpusScreen
from fmae_tui.screens.queue import QueueScreen
from tui_support import screen_text, squash, wait_until


def _stamp(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def _run(root: Path, seed: int) -> RunDir:
    return RunDir.create(root, make_run_id("bp4d", "vit_tiny", seed, fold=1, lambda_id=0.0),
                         {"task": "au", "dataset": "bp4d", "fold": 1, "seed": seed, "lambda_id": 0.0,
                          "model": "vit_tiny", "recipe": "fmae", "epochs": 2}, {})


@pytest.fixture
def held(tmp_path: Path):
    """A runs folder whose scheduler lock this process holds (a scheduler that places nothing)."""
    root = tmp_path / "runs"
    root.mkdir()
    lock = open(root / ".scheduler.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (root / "scheduler.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                     "started": "test"}))
    yield root
    lock.close()


def _study(root: Path) -> dict[str, object]:
    q = Queue(root)
    jobs = {name: q.add(_run(root, seed)) for seed, name in enumerate(("done", "queued0", "running", "queued2", "failed"))}
    q.set_priority(jobs["queued2"].id, 2)
    for name in ("done", "failed"):
        assert q.claim(jobs[name].id, "cpu0", 1, 1)
        q.finish(jobs[name].id, name, error="boom" if name == "failed" else None)
        RunDir(jobs[name].path).mark_ended(name, exit_code=0 if name == "done" else 1)
        time.sleep(0.01)  # "failed" ends last
    running = RunDir(jobs["running"].path)
    assert q.claim(jobs["running"].id, "cpu0", os.getpid(), os.getpid())
    running.mark_running(pid=os.getpid(), host=socket.gethostname())
    running.heartbeat(epoch=1, epochs=2, step=25, total_steps=100)
    running.update_status(started=_stamp(100))
    return {"queue": q, **jobs}


def test_timing_comes_from_the_step_rate() -> None:
    now = time.time()
    status = {"state": "running", "started": _stamp(100), "heartbeat": _stamp(0), "step": 25, "total_steps": 100}
    elapsed, eta = timing(status, now)
    assert 99 < elapsed < 102 and 295 < eta < 305  # 25 steps in 100 s: 75 left take 300 s
    assert timing({**status, "step": 0}, now)[1] is None  # no step yet: no rate to go by
    done = {**status, "state": "done", "ended": _stamp(40)}
    assert 59 < timing(done, now)[0] < 62 and timing(done, now)[1] is None


def test_a_cancel_that_finds_the_run_done_says_so(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    q = Queue(root)
    job = q.add(_run(root, 0))
    assert q.claim(job.id, "cpu0", 999999, 999999)
    run = RunDir(job.path)
    run.mark_running(pid=999999, host=socket.gethostname())
    run.mark_ended("done", exit_code=0)  # the last step finished just now; the queue row still says running
    message = cancel_job(q, q.get(job.id))
    assert message.startswith(f"job {job.id} finished before the cancel arrived") and "SIGTERM" not in message


async def test_queue_lists_running_then_queued_by_priority_then_finished(held: Path) -> None:
    study = _study(held)
    order = [study[k].id for k in ("running", "queued2", "queued0", "failed", "done")]
    rows, _ = queue_rows(study["queue"])
    assert [r["id"] for r in work_order(rows)] == order
    app = create_app(runs_dir=held)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.polls > 0)
        screen = app.screen
        table = screen.table
        assert [int(r.key.value) for r in table.ordered_rows] == order
        assert table.cursor_row == 0 and screen.selected["id"] == study["running"].id
        line = next(line for line in screen_text(app).splitlines() if line.split()[:2] == [str(order[0]), "running"])
        assert "25% e1/2" in line and re.search(r"1m4\ds\s+[45]m\d\ds", line), line  # elapsed, then ETA
        assert "needsaCPUslot" not in squash(screen_text(app))
        await pilot.press("down")
        assert "needsaCPUslot" in squash(screen_text(app))  # a queued job: what it waits for
        await pilot.press("end")
        assert screen.selected["id"] == study["done"].id and "needsaCPUslot" not in squash(screen_text(app))

        RunDir(study["running"].path).heartbeat(step=50)  # progress follows status.json
        await wait_until(pilot, lambda: "50% e1/2" in screen_text(app), timeout=3)
        await pilot.press("home", "down", "minus")  # no question for a priority step; the job moves down
        await wait_until(pilot, lambda: study["queue"].get(study["queued2"].id).priority == 1)
        await pilot.press("minus", "minus")
        await wait_until(pilot, lambda: [int(r.key.value) for r in table.ordered_rows][1] == study["queued0"].id)
        assert screen.selected["id"] == study["queued2"].id  # the cursor went with it


async def test_gpus_without_a_gpu_shows_the_cpu_and_each_jobs_process(held: Path) -> None:
    config = held.parent / "fmae.toml"
    config.write_text(default_config_text().replace('device = "auto"', 'device = "cpu"'), encoding="utf-8")
    q = Queue(held)
    job = q.add(_run(held, 0))
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 60\nwhile time.time() < end: pass"])
    try:
        assert q.claim(job.id, "cpu0", busy.pid, busy.pid)
        RunDir(job.path).mark_running(pid=busy.pid, host=socket.gethostname())
        app = create_app(config, held)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g")
            await wait_until(pilot, lambda: isinstance(app.screen, GpusScreen) and app.screen.polls > 1, timeout=10)
            text = screen_text(app)
            assert "no GPU here (compute.device = cpu)" in text
            assert re.search(r"CPU +\S+ +\d+% of \d+ core", text) and "load" in text and re.search(r"memory +\S+ [\d.]+/[\d.]+ GiB used", text)
            table = app.screen.query_one("#gpus-table")
            assert [str(c.label) for c in table.columns.values()] == ["slot", "run", "pid", "CPU %", "memory", "procs"]
            row = [str(c) for c in table.get_row_at(0)]
            assert row[0] == "cpu0" and job.run_id.endswith(row[1]) and row[2] == str(busy.pid)
            assert float(row[3].rstrip("%")) > 5  # it spins: the second look measures it
            assert row[4].endswith("GiB") and float(row[4].split()[0]) > 0
    finally:
        busy.kill()
        busy.wait()


def test_a_launched_job_whose_trainer_has_not_said_running_is_starting(tmp_path: Path) -> None:
    """The scheduler claimed and spawned it (the row says running) while status.json still says queued:
    the Queue screen and `queue ls` say starting, list it with the running ones, elapsed from the launch."""
    from fmae.queue_ops import counts_line, table_cells
    from fmae_tui.screens.queue import screen_cells

    root = tmp_path / "runs"
    q = Queue(root)
    waiting, launched = q.add(_run(root, 0)), q.add(_run(root, 1))
    assert q.claim_launch(launched.id, "cpu0", "1@test")
    q.launched(launched.id, os.getpid(), os.getpid())
    with sqlite3.connect(q.db_path) as db:  # launched 30 s ago
        db.execute("UPDATE jobs SET started = ? WHERE id = ?", (time.time() - 30, launched.id))
    rows, _ = queue_rows(q)
    by_id = {r["id"]: r for r in rows}
    assert by_id[launched.id]["state"] == "starting" and by_id[waiting.id]["state"] == "queued"
    assert 29 < by_id[launched.id]["elapsed_s"] < 40 and by_id[launched.id]["eta_s"] is None
    assert [r["id"] for r in work_order(rows)] == [launched.id, waiting.id]
    assert counts_line(rows) == "1 queued, 1 starting"
    cells = screen_cells(by_id[launched.id], wide=True)
    assert (cells["state"], cells["slot"], cells["ETA"]) == ("starting", "cpu0", "-") and cells["elapsed"].startswith("3")
    assert table_cells(by_id[launched.id])[1] == "starting"
    q.cancel(launched.id)
    assert screen_cells(queue_rows(q)[0][1], wide=True)["state"] == "cancelling"
    RunDir(launched.path).mark_running(pid=os.getpid(), host=socket.gethostname())
    assert {r["id"]: r["state"] for r in queue_rows(q)[0]}[launched.id] == "running"


def test_a_job_handed_to_slurm_whose_trainer_has_not_said_running_is_submitted(tmp_path: Path) -> None:
    """A job the cluster executor placed (slot slurm<id>) may be pending in Slurm's own queue for hours:
    the Queue screen and `queue ls` say submitted, not starting, and list it with the running ones."""
    from fmae.executors.slurm import SLOT_PREFIX
    from fmae.queue_ops import counts_line, table_cells
    from fmae_tui.screens.queue import screen_cells

    root = tmp_path / "runs"
    q = Queue(root)
    waiting, local, slurm = q.add(_run(root, 0)), q.add(_run(root, 1)), q.add(_run(root, 2))
    assert q.claim_launch(local.id, "cpu0", "1@test") and q.claim_launch(slurm.id, f"{SLOT_PREFIX}{slurm.id}", "1@test")
    rows, _ = queue_rows(q)
    by_id = {r["id"]: r["state"] for r in rows}
    assert (by_id[waiting.id], by_id[local.id], by_id[slurm.id]) == ("queued", "starting", "submitted")
    assert counts_line(rows) == "1 queued, 1 starting, 1 submitted"
    assert [r["id"] for r in work_order(rows)] == [local.id, slurm.id, waiting.id]
    row = next(r for r in rows if r["id"] == slurm.id)
    assert screen_cells(row, wide=True)["state"] == table_cells(row)[1] == "submitted"
    assert [r["id"] for r in queue_rows(q, states={"submitted"})[0]] == [slurm.id]
