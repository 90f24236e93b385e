"""What the queue tests share (tests/test_queue.py, tests/test_queue_commands.py): no scheduler autostart,
the `queue add` arguments, a minimal run folder, a run's status.json, and 8 queued jobs made by the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fmae.runs import RunDir, make_run_id



@pytest.fixture(autouse=True)
def _no_autostart(monkeypatch):
    """These tests look at the queue's rows as they leave them: `queue ls/cancel/priority/rebuild` must
    not start a scheduler that would act on them (tests/test_scheduler.py covers that it does)."""
    monkeypatch.setenv("FMAE_NO_AUTOSTART", "1")


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
