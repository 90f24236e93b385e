"""The run folder contract (fmae.runs): real files in tmp_path, real processes for the status lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fmae.errors import FmaeError
from fmae.run_lock import EXIT_ALREADY_RUNNING, AlreadyRunning, exec_lock, exec_lock_holder, trainer_alive
from fmae.runs import (FINAL_STATES, STATES, MetricsTail, RunDir, check_name, list_runs, make_run_id, pid_alive,
                       read_metrics)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CONFIG = {
    "task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "model": "vit_large", "lambda_id": 2.0,
    "blr": 5e-4, "epochs": 20, "compile": False, "save_best": True, "input_size": 224,
    "aus": ["AU1", "AU2", "AU4"], "betas": [0.9, 0.999], "init": "", "unused": None, "path": Path("/data/x"),
}
PROVENANCE = {"fmae_version": "0.1.0", "git_commit": "abc123", "command": ["fmae", "train", "bp4d"], "host": "h",
              "set_by": {"blr": "recipe bp4d/fmae", "seed": "command line"}}


def new_run(runs_dir: Path, run_id: str = "20261128-041233-bp4d-f1-s0-l2-vit_large-7c2a", **config) -> RunDir:
    return RunDir.create(runs_dir, run_id, {**CONFIG, **config}, PROVENANCE)


def strict_json(line: str):
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


# --- create / open / run.toml ----------------------------------------------------------------------
def test_create_writes_run_toml_and_queued_status(tmp_path):
    run = new_run(tmp_path / "runs" / "deeper")  # parents are made
    assert run.path == tmp_path / "runs" / "deeper" / run.id and run.id.startswith("20261128-041233-bp4d")
    assert sorted(p.name for p in run.path.iterdir()) == ["run.toml", "status.json"]
    assert not [p for p in run.path.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    status = run.read_status()
    assert status["state"] == "queued" and TIMESTAMP.fullmatch(status["created"])
    for name, attr in [("run.toml", "run_toml"), ("status.json", "status_path"), ("metrics.jsonl", "metrics_path"),
                       ("summary.json", "summary_path"), ("train.log", "log_path"), ("checkpoints", "checkpoints"),
                       ("predictions", "predictions"), ("notes.md", "notes_path"), ("tags", "tags_path")]:
        assert getattr(run, attr) == run.path / name
    opened = RunDir.open(run.path)
    assert opened.id == run.id and opened.read_status() == status


def test_run_toml_round_trips_and_is_plain_toml(tmp_path):
    run = new_run(tmp_path)
    cfg = run.read_config()
    expected = {k: (str(v) if isinstance(v, Path) else v) for k, v in CONFIG.items() if v is not None}
    assert cfg == expected
    assert isinstance(cfg["blr"], float) and cfg["compile"] is False and cfg["betas"] == [0.9, 0.999]
    assert "unused" not in cfg  # TOML has no null
    assert run.read_provenance() == PROVENANCE
    doc = tomllib.loads(run.run_toml.read_text())  # any TOML reader, not only ours
    assert set(doc) == {"config", "provenance"} and doc["config"] == expected


def test_create_refuses_what_it_cannot_write_and_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="config.bad"):
        new_run(tmp_path, bad=object())
    with pytest.raises(TypeError):
        new_run(tmp_path, bad=[1, None])
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_create_twice_and_unsafe_ids_are_errors(tmp_path):
    run = new_run(tmp_path)
    with pytest.raises(FmaeError, match="already exists"):
        new_run(tmp_path, run.id)
    assert run.read_status()["state"] == "queued"  # the first one is untouched
    for bad in ("../escape", "a/b", "..", "", ".hidden", "x" * 300):
        with pytest.raises(FmaeError):
            new_run(tmp_path / "runs", bad)
    assert not (tmp_path / "escape").exists()


def test_open_needs_a_folder_with_run_toml(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FmaeError, match=r"is not a run folder \(no run.toml\)"):
        RunDir.open(tmp_path / "empty")
    for p in (tmp_path / "file", tmp_path / "missing"):
        with pytest.raises(FmaeError, match="is not a run folder"):
            RunDir.open(p)


def test_corrupt_run_toml_names_the_file(tmp_path):
    run = new_run(tmp_path)
    run.run_toml.write_text("[config\nx = ")
    for read in (run.read_config, run.read_provenance):
        with pytest.raises(FmaeError, match="run.toml") as e:
            read()
        assert "\n" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_runs_folder_is_an_error(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        with pytest.raises(FmaeError, match=re.escape(str(runs))):
            new_run(runs)
    finally:
        runs.chmod(0o755)


def test_runs_folder_that_cannot_be_a_folder_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    for runs in (tmp_path / "file", tmp_path / "file" / "runs"):
        with pytest.raises(FmaeError, match=re.escape(str(runs))) as e:
            new_run(runs)
        assert "\n" not in str(e.value)


# --- run ids and names -----------------------------------------------------------------------------
def test_make_run_id_format():
    now = datetime(2026, 11, 28, 4, 12, 33, tzinfo=timezone.utc)
    rid = make_run_id("bp4d", "vit_large", 0, fold=1, lambda_id=2.0, now=now)
    assert re.fullmatch(r"20261128-041233-bp4d-f1-s0-l2-vit_large-[0-9a-f]{4}", rid)
    assert re.fullmatch(r"20261128-041233-bp4d-f3-s2-l0-vit_base-[0-9a-f]{4}",
                        make_run_id("bp4d", "vit_base", 2, fold=3, lambda_id=0, now=now))
    assert "-l0.5-" in make_run_id("disfa", "vit_base", 0, fold=1, lambda_id=0.5, now=now)
    assert re.fullmatch(r"20261128-041233-rafdb-s1-vit_base-[0-9a-f]{4}", make_run_id("rafdb", "vit_base", 1, now=now))
    assert re.fullmatch(r"20261128-041233-idprobe-bp4d-s0-vit_base-[0-9a-f]{4}",
                        make_run_id("bp4d", "vit_base", 0, task="idprobe", now=now))
    assert re.fullmatch(r"20261128-041233-eval-bp4d-f1-s0-l2-tiny-best\.v2-[0-9a-f]{4}",
                        make_run_id("bp4d", "tiny", 0, task="eval", fold=1, lambda_id=2, name="best.v2", now=now))
    # other time zones are converted, naive times are UTC
    later = datetime(2026, 11, 28, 5, 12, 33, tzinfo=timezone(timedelta(hours=1)))
    assert make_run_id("bp4d", "x", 0, now=later).startswith("20261128-041233-")
    assert make_run_id("bp4d", "x", 0, now=now.replace(tzinfo=None)).startswith("20261128-041233-")
    assert check_name(make_run_id("bp4d", "vit_large", 0, fold=1, lambda_id=2)) and len({
        make_run_id("bp4d", "x", 0, now=now) for _ in range(50)}) > 1  # the random part differs


def test_run_ids_sort_by_time():
    start = datetime(2026, 1, 31, 23, 59, 58, tzinfo=timezone.utc)
    ids = [make_run_id(ds, "vit_base", 0, now=start + timedelta(seconds=i)) for i, ds in enumerate(["zz", "aa", "mm"])]
    assert sorted(ids) == ids


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "..", "a..b", ".x", "-x", "a b", "a\nb", "x" * 81, "ü"])
def test_bad_names_are_one_line_errors(bad):
    for what in ("run name", "tag"):
        with pytest.raises(FmaeError) as e:
            check_name(bad, what)
        msg = str(e.value)
        assert msg.startswith(what) and "\n" not in msg and "use letters, digits" in msg
    with pytest.raises(FmaeError, match="run name"):
        make_run_id("bp4d", "vit_base", 0, name=bad)


def test_good_names_pass():
    for good in ("a", "ablation_2", "v1.2-final", "X" * 80):
        assert check_name(good) == good


def test_bad_lambda_is_an_error():
    for bad in (-1, float("nan")):
        with pytest.raises(FmaeError, match="lambda_id"):
            make_run_id("bp4d", "vit_base", 0, fold=1, lambda_id=bad)


# --- status.json -----------------------------------------------------------------------------------
def test_status_lifecycle(tmp_path):
    run = new_run(tmp_path)
    s = run.mark_running(pid=123, pgid=120, host="node1", gpus="0,1")
    assert s["state"] == "running" and s["gpus"] == [0, 1] and s["pid"] == 123 and s["pgid"] == 120
    assert all(TIMESTAMP.fullmatch(s[k]) for k in ("started", "heartbeat", "updated"))
    assert run.mark_running(pid=5, gpus="")["gpus"] == []
    s = run.heartbeat(epoch=2, step=40, total_steps=400, epochs=20)
    assert (s["epoch"], s["step"], s["total_steps"], s["epochs"]) == (2, 40, 400, 20)
    assert run.heartbeat(step=41)["epoch"] == 2  # fields not given keep their value
    s = run.mark_ended("failed", exit_code=1, error="CUDA out of memory.\nTried to allocate " + "x" * 1000)
    assert s["state"] == "failed" and s["exit_code"] == 1 and TIMESTAMP.fullmatch(s["ended"])
    assert "\n" not in s["error"] and len(s["error"]) <= 300 and s["error"].startswith("CUDA out of memory. Tried")
    assert run.read_status() == s and strict_json(run.status_path.read_text()) == s
    s = run.mark_queued()  # retry
    assert s["state"] == "queued" and not {"pid", "ended", "error", "exit_code", "started"} & set(s)
    assert s["created"] and s["step"] == 41
    s = run.mark_running(pid=7)
    assert "pgid" not in s and "error" not in s
    assert run.mark_ended("done", exit_code=0)["exit_code"] == 0
    with pytest.raises(ValueError):
        run.update_status(state="exploded")
    with pytest.raises(ValueError):
        run.mark_ended("running")
    assert set(FINAL_STATES) < set(STATES) and "queued" not in FINAL_STATES


def _hammer(path: str, key: str, n: int) -> None:
    run = RunDir.open(path)
    for i in range(n):
        run.update_status(**{f"{key}{i}": i})


def test_concurrent_status_updates_from_two_processes_lose_nothing(tmp_path):
    run = new_run(tmp_path)
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    procs = [ctx.Process(target=_hammer, args=(str(run.path), key, 50)) for key in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    status = run.read_status()
    assert all(status.get(f"{k}{i}") == i for k in "ab" for i in range(50))
    assert status["state"] == "queued"


# --- metrics.jsonl ---------------------------------------------------------------------------------
def test_append_metrics_writes_valid_json_lines(tmp_path):
    run = new_run(tmp_path)
    run.append_metrics({"split": "train", "epoch": 1, "step": 20, "loss": float("nan"), "lr": 1e-4})
    run.append_metrics({"split": "test", "epoch": 1, "step": 20, "t": 5.0, "f1_05_mean": 0.5,
                        "f1_05": {"AU1": float("inf"), "AU2": 0.25}, "auc": [float("-inf"), 1.0]})
    lines = run.metrics_path.read_text().splitlines()
    first, second = (strict_json(line) for line in lines)
    assert first["loss"] is None and isinstance(first["t"], float) and first["lr"] == 1e-4
    assert second["t"] == 5.0 and second["f1_05"] == {"AU1": None, "AU2": 0.25} and second["auc"] == [None, 1.0]
    assert read_metrics(run.metrics_path) == [first, second]


def test_metrics_tail_reads_only_new_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == [] and tail.offset == 0  # not there yet
    run = new_run(tmp_path / "runs")
    tail = MetricsTail(run.metrics_path)
    for step in range(2000):
        run.append_metrics({"split": "train", "step": step, "loss": 1.0 / (step + 1)})
    assert [r["step"] for r in tail.read_new()] == list(range(2000))
    size = run.metrics_path.stat().st_size
    assert tail.offset == size and tail.read_new() == []
    read_before = tail.bytes_read
    run.append_metrics({"split": "train", "step": 2000})
    new = tail.read_new()
    assert [r["step"] for r in new] == [2000]
    # the cost of a read is the new line, not the file
    assert tail.bytes_read - read_before == run.metrics_path.stat().st_size - size < 100


def test_metrics_tail_waits_for_the_newline_and_skips_corrupt_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    with open(path, "ab") as f:
        f.write(b'{"step": 1}\n{"step": 2, "lo')
    assert tail.read_new() == [{"step": 1}]
    offset = tail.offset
    assert tail.read_new() == [] and tail.offset == offset  # still half a line
    with open(path, "ab") as f:
        f.write(b'ss": 0.5}\nnot json at all\n[1, 2]\n\xff\xfe\n\n{"step": 3}\n')
    assert tail.read_new() == [{"step": 2, "loss": 0.5}, {"step": 3}]
    assert tail.bad_lines == 3
    assert read_metrics(path) == [{"step": 1}, {"step": 2, "loss": 0.5}, {"step": 3}]


def test_metrics_tail_restarts_after_truncation_or_replacement(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(10)))
    tail = MetricsTail(path)
    assert len(tail.read_new()) == 10
    path.write_text(json.dumps({"step": 0}) + "\n")  # truncated in place: shorter than the offset
    assert tail.read_new() == [{"step": 0}] and tail.resets == 1
    # replaced atomically by a file at least as long (a resumed run rewriting its log): a new inode
    tmp = tmp_path / "new.jsonl"
    tmp.write_text("".join(json.dumps({"step": i, "resumed": True}) + "\n" for i in range(3)))
    os.replace(tmp, path)
    assert [r["step"] for r in tail.read_new()] == [0, 1, 2] and tail.resets == 2


# --- summary, notes, tags --------------------------------------------------------------------------
def test_summary_is_atomic(tmp_path):
    run = new_run(tmp_path)
    assert run.read_summary() is None
    run.write_summary({"best_epoch": 3, "best_value": 0.61, "last": {"f1_05": {"AU1": float("nan")}}})
    before = run.summary_path.read_text()
    assert run.read_summary() == {"best_epoch": 3, "best_value": 0.61, "last": {"f1_05": {"AU1": None}}}
    with pytest.raises(TypeError):
        run.write_summary({"best_epoch": 4, "oops": object()})
    assert run.summary_path.read_text() == before
    assert sorted(p.name for p in run.path.iterdir()) == ["run.toml", "status.json", "summary.json"]
    run.summary_path.write_text("{broken")
    with pytest.raises(FmaeError, match="summary.json"):
        run.read_summary()


def test_notes_and_tags(tmp_path):
    run = new_run(tmp_path)
    assert run.read_notes() == "" and run.read_tags() == []
    run.write_notes("# why\nλ sweep, second try\n")
    assert run.read_notes() == "# why\nλ sweep, second try\n"
    run.write_tags(["paper", "ablation-2", "paper", " v1.0 "])
    assert run.read_tags() == ["paper", "ablation-2", "v1.0"]
    assert run.tags_path.read_text() == "paper\nablation-2\nv1.0\n"
    with pytest.raises(FmaeError, match="^tag '../x'"):
        run.write_tags(["ok", "../x"])
    assert run.read_tags() == ["paper", "ablation-2", "v1.0"]


# --- listing -----------------------------------------------------------------------------------------
def test_list_runs_reports_bad_folders_without_raising(tmp_path):
    runs = tmp_path / "runs"
    good = new_run(runs, "20260101-000000-bp4d-f1-s0-l0-vit_base-aaaa")
    good.write_summary({"best_value": 0.6})
    bad_status = new_run(runs, "20260101-000001-bp4d-f1-s1-l0-vit_base-bbbb", seed=1)
    bad_status.status_path.write_text('{"state": "runn')
    bad_state = new_run(runs, "20260101-000003-bp4d-f1-s3-l0-vit_base-dddd")
    bad_state.update_status(state="queued")
    bad_state.status_path.write_text('{"state": "paused"}')
    bad_toml = new_run(runs, "20260101-000004-bp4d-f1-s4-l0-vit_base-eeee")
    bad_toml.run_toml.write_text("= nope")
    no_toml = runs / "20260101-000002-bp4d-f1-s2-l0-vit_base-cccc"
    no_toml.mkdir()
    (no_toml / "status.json").write_text('{"state": "running", "pid": 1}')
    (runs / "queue.sqlite").write_bytes(b"SQLite format 3\x00")
    (runs / ".hidden").mkdir()
    (runs / ".hidden" / "run.toml").write_text("[config]\n")
    (runs / "unrelated").mkdir()
    empty_status = new_run(runs, "20260101-000005-bp4d-f1-s5-l0-vit_base-ffff")
    empty_status.status_path.write_text("{}")
    not_a_table = new_run(runs, "20260101-000006-bp4d-f1-s6-l0-vit_base-0000")
    not_a_table.run_toml.write_text("config = 3\n")

    infos = list_runs(runs)
    assert [i.id for i in infos] == [good.id, bad_status.id, no_toml.name, bad_state.id, bad_toml.id,
                                     empty_status.id, not_a_table.id]
    ok = infos[0]
    assert ok.state == "queued" and ok.problem is None and ok.config["model"] == "vit_large"
    assert ok.summary == {"best_value": 0.6} and ok.status["state"] == "queued" and ok.path == good.path
    for info in infos[1:]:
        assert info.state == "corrupt" and info.problem and "\n" not in info.problem
    assert infos[1].problem.startswith("status.json: not valid JSON") and infos[1].config["seed"] == 1
    assert "no run.toml" in infos[2].problem and infos[2].status["pid"] == 1
    assert infos[3].problem == "status.json: unknown state 'paused'"
    assert infos[4].problem.startswith("run.toml: not valid TOML") and infos[4].status["state"] == "queued"
    assert infos[5].problem == "status.json: unknown state None"
    assert infos[6].problem.startswith("run.toml: 'config' must be a table")
    assert list_runs(tmp_path / "nowhere") == []


def test_a_bad_summary_is_reported_but_keeps_the_state(tmp_path):
    run = new_run(tmp_path)
    run.summary_path.write_text("[1, 2]")
    (info,) = list_runs(tmp_path)
    assert info.state == "queued" and info.summary is None and "summary.json" in info.problem


# --- processes and imports ---------------------------------------------------------------------------
def test_pid_alive():
    assert pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    assert not pid_alive(0) and not pid_alive(-1)
    assert pid_alive(1)  # init: alive, even where signalling it is not permitted


def test_runs_module_does_not_import_torch():
    code = "import sys, fmae.runs; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_zombie_is_dead():
    """An exited child nobody has reaped yet (as under a PID 1 that never reaps) is not a live trainer."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and _state(child.pid) != "Z":
        time.sleep(0.02)
    assert _state(child.pid) == "Z"  # exited, unreaped: os.kill(pid, 0) still succeeds
    os.kill(child.pid, 0)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


HOLD_LOCK = r"""
import sys, time
from fmae.run_lock import exec_lock
with exec_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_trainer_lock_per_run_folder(tmp_path):
    """The run folder's trainer lock: a second holder is refused at once naming the first; the lock ends
    with its process, however it dies (kill -9 here), and then `trainer_alive` says no."""
    run = RunDir.create(tmp_path, "r1", CONFIG, PROVENANCE)
    assert exec_lock_holder(run.path) is None and not trainer_alive(run.path, None)
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        assert exec_lock_holder(run.path) == first.pid and trainer_alive(run.path, None)
        with pytest.raises(AlreadyRunning, match=f"already being trained by pid {first.pid}") as refused:
            with exec_lock(run.path):
                pass
        assert refused.value.exit_code == EXIT_ALREADY_RUNNING == 3
    finally:
        first.kill()
        first.wait()
    assert exec_lock_holder(run.path) is None and not trainer_alive(run.path, first.pid)
    with exec_lock(run.path):  # free again: taken at once
        assert exec_lock_holder(run.path) == os.getpid()
