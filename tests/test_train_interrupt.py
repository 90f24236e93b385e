"""Ctrl-C (SIGINT) and SIGTERM of `fmae train` as a user sends them: before the trainer has started
(torch still loading) and during training. Either way the run ends `cancelled`, which `fmae exec`
resumes, with one line and the shell's exit code (128 + the signal), never `queued` or `running` for
ever behind a dead process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["--model", "vit_tiny", "--batch-size", "8", "--set", "input_size=32", "--set", "num_workers=0"]


def _start(root: Path, runs: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    args = ["train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl", *TINY, *extra,
            "--runs-dir", runs]
    return subprocess.Popen([sys.executable, "-m", "fmae", *map(str, args)], env={**env, "COLUMNS": "80"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _poll(what, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := what():
            return found
        time.sleep(0.005)
    raise AssertionError("timed out")


def _status(runs: Path) -> Path | None:
    return next(iter(runs.glob("*/status.json")), None)


def _cancel_line(stderr: str, run: Path) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("cancelled:")]
    assert lines == [f"cancelled: {run} (resume with `fmae exec {run}`)"], stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_torch_loads_ends_the_run_cancelled(make_synth, tmp_path, sig):
    proc = _start(make_synth("bp4d"), tmp_path, "--epochs", "1")
    status_path = _poll(lambda: _status(tmp_path))  # the folder exists, state queued: no trainer yet
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    run = status_path.parent
    assert proc.returncode == 128 + sig, stderr
    status = json.loads(status_path.read_text())
    assert "started" not in status, "the trainer started before the signal: signal sooner"
    assert status["state"] == "cancelled" and status["exit_code"] == 128 + sig
    assert "before training started" in status["error"]
    _cancel_line(stderr, run)


def test_ctrl_c_during_training_checkpoints_and_ends_cancelled(make_synth, tmp_path):
    """The first Ctrl-C is a cancel: the step finishes, last.pt is written, status says where it resumes."""
    import torch

    proc = _start(make_synth("bp4d"), tmp_path, "--epochs", "4")
    metrics = _poll(lambda: next((p for p in tmp_path.glob("*/metrics.jsonl") if p.stat().st_size), None))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    run = metrics.parent
    assert proc.returncode == 130, stderr
    status = json.loads((run / "status.json").read_text())
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert status["state"] == "cancelled" and status["exit_code"] == 130
    assert status["error"] == f"cancelled (Ctrl-C); resume continues from epoch 1, step {saved['step']}"
    assert status["step"] == saved["step"] < 16
    _cancel_line(stderr, run)
