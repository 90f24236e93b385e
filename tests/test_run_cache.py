"""fmae.run_cache: the same listing as runs.list_runs, read from the cache for the folders that did not change."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import fmae.run_cache as run_cache
from fmae.run_cache import CACHE_NAME, cached_list_runs
from fmae.runs import RunDir, list_runs

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
    assert first == list_runs(runs) and len(first) == 4 and first[3].state == "corrupt"
    assert len(seen) == 4 and (runs / CACHE_NAME).is_file()
    assert cached_list_runs(runs) == first and len(seen) == 4  # nothing read again

    # An evaluation rewrites one summary (atomically: a new file); another run is removed.
    summary = json.loads(FIXTURE.read_text())
    summary["best_value"] = 0.99
    RunDir(folders[1]).write_summary(summary)
    age(folders[1], 30)
    shutil.rmtree(folders[2])
    again = cached_list_runs(runs)
    assert again == list_runs(runs) and [i.id for i in again] == [f.name for f in (folders[0], folders[1], folders[3])]
    assert seen[4:] == [folders[1]] and again[1].summary["best_value"] == 0.99


def test_a_folder_written_just_now_is_read_each_time(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (running,) = make_runs(runs, 1)
    RunDir(running).heartbeat(step=3)  # a live run's status.json, rewritten every few seconds
    seen = loads_counted(monkeypatch)
    assert cached_list_runs(runs)[0].status["step"] == 3
    RunDir(running).heartbeat(step=4)
    assert cached_list_runs(runs)[0].status["step"] == 4 and len(seen) == 2


@pytest.mark.parametrize("content", [b"", b"{\"fmae_run_cache\": 99, \"runs\": {}}", b"\x00garbage"])
def test_a_bad_or_foreign_cache_file_is_ignored_and_replaced(tmp_path, content):
    runs = tmp_path / "runs"
    make_runs(runs, 2)
    (runs / CACHE_NAME).write_bytes(content)
    assert cached_list_runs(runs) == list_runs(runs)
    assert json.loads((runs / CACHE_NAME).read_text())["fmae_run_cache"] == run_cache.VERSION
