"""fmae.run_cache: the same listing as runs.list_runs, slimmed to what the report reads, read from the cache for
the folders that did not change."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import fmae.run_cache as run_cache
from fmae.run_cache import CACHE_NAME, cached_list_runs, slim
from fmae.runs import RunDir, RunInfo, list_runs

FIXTURE = Path(__file__).parent / "fixtures" / "summaries" / "au.json"
CFG = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 0.0, "model": "vit_tiny", "recipe": "fmae"}


def age(folder: Path, seconds: float = 60) -> None:
    """Every stamp of a run folder moved into the past: a finished run's, which the cache trusts."""
    past = time.time() - seconds
    for p in [*folder.iterdir(), folder]:
        os.utime(p, (past, past))


def make_runs(runs: Path, n: int) -> list[Path]:
    folders = []
    for i in range(n):
        run = RunDir.create(runs, f"20261201-000000-bp4d-f1-s{i}-l0-vit_tiny-{i:04x}", {**CFG, "seed": i}, {})
        run.mark_running(pid=1, pgid=1, host="h", gpus="")
        run.mark_ended("done", exit_code=0)
        shutil.copyfile(FIXTURE, run.path / "summary.json")
        age(run.path)
        folders.append(run.path)
    return folders


def listed(runs: Path):
    """What the report is to see: list_runs' records, slimmed."""
    return [slim(info) for info in list_runs(runs)]


def loads_counted(monkeypatch) -> list[Path]:
    seen: list[Path] = []
    real = run_cache.load_run

    def counting(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(run_cache, "load_run", counting)
    return seen


def test_the_cache_lists_what_list_runs_lists_and_reads_only_changed_folders(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    folders = make_runs(runs, 4)
    (runs / "exports").mkdir()  # not a run folder: never listed
    (folders[3] / "status.json").write_text("{not json")  # a broken run: listed as corrupt, with its problem
    age(folders[3])
    seen = loads_counted(monkeypatch)

    first = cached_list_runs(runs)
    assert first == listed(runs) and len(first) == 4 and first[3].state == "corrupt"
    assert len(seen) == 4 and (runs / CACHE_NAME).is_file()
    assert cached_list_runs(runs) == first and len(seen) == 4  # nothing read again

    # An evaluation rewrites one summary (atomically: a new file); another run is removed.
    summary = json.loads(FIXTURE.read_text())
    summary["best"]["f1_05"]["AU1"] = 0.99
    RunDir(folders[1]).write_summary(summary)
    age(folders[1], 30)
    shutil.rmtree(folders[2])
    again = cached_list_runs(runs)
    assert again == listed(runs) and [i.id for i in again] == [f.name for f in (folders[0], folders[1], folders[3])]
    assert seen[4:] == [folders[1]] and again[1].summary["best"]["f1_05"]["AU1"] == 0.99


def test_a_folder_written_just_now_is_read_each_time(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (running,) = make_runs(runs, 1)
    summary = json.loads(FIXTURE.read_text())
    RunDir(running).write_summary(summary)  # a live run's first evaluation, and its second just after
    seen = loads_counted(monkeypatch)
    assert cached_list_runs(runs)[0].summary == slim(list_runs(runs)[0]).summary
    summary["best"]["f1_05"]["AU1"] = 0.25
    RunDir(running).write_summary(summary)
    assert cached_list_runs(runs)[0].summary["best"]["f1_05"]["AU1"] == 0.25 and len(seen) == 2


def test_a_slim_record_keeps_what_the_report_scores_and_the_whole_config():
    """Every --metric's per-AU numbers of both records, the epoch, the threshold and the degenerate flags;
    no status beyond the state; the config untouched (any key can be a --by group)."""
    summary = json.loads(FIXTURE.read_text())
    info = RunInfo("r", Path("r"), "done", {**CFG, "blr": 1e-3}, {"state": "done", "pid": 7},
                   summary)
    small = slim(info)
    assert small.config == info.config and small.status == {"state": "done"}
    for name in ("best", "last"):
        for key in ("f1_05", "f1_best", "auc", "epoch", "best_threshold"):
            assert small.summary[name][key] == summary[name][key]
    assert small.summary["degenerate"] == summary["degenerate"]
    assert len(json.dumps(small.summary)) < len(json.dumps(summary)) / 1.5


def test_configs_are_kept_as_differences_and_come_back_whole(tmp_path):
    runs = tmp_path / "runs"
    folders = make_runs(runs, 3)
    cached_list_runs(runs)
    data = json.loads((runs / CACHE_NAME).read_text())
    assert len(data["configs"]) == 1 and [data["runs"][f.name][3] for f in folders] == [{}, {"seed": 1}, {"seed": 2}]
    assert [i.config for i in cached_list_runs(runs)] == [RunDir(f).read_config() for f in folders]


@pytest.mark.parametrize("content", [b"", b"{\"fmae_run_cache\": 99, \"runs\": {}}", b"\x00garbage"])
def test_a_bad_or_foreign_cache_file_is_ignored_and_replaced(tmp_path, content):
    runs = tmp_path / "runs"
    make_runs(runs, 2)
    (runs / CACHE_NAME).write_bytes(content)
    assert cached_list_runs(runs) == listed(runs)
    assert json.loads((runs / CACHE_NAME).read_text())["fmae_run_cache"] == run_cache.VERSION
