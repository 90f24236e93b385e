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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_folder_is_made_waits_for_it_then_ends_it_cancelled(tmp_path, capsys, sig):
    """`fmae train`'s guard around create_run: the signal neither cuts the folder in half nor is lost."""
    import typer

    from fmae.cli.training import StopBeforeTraining
    from fmae.runs import RunDir

    before = signal.getsignal(sig)
    with pytest.raises(typer.Exit) as stopped:
        with StopBeforeTraining() as stop:
            os.kill(os.getpid(), sig)  # as if it came while the folder was being written: held
            time.sleep(0.01)
            run = RunDir.create(tmp_path, "the-run", {"task": "au"}, {})
            stop.made(run.path)
            raise AssertionError("the held signal was not raised once the folder existed")
    assert stopped.value.exit_code == 128 + sig and signal.getsignal(sig) == before
    status = run.read_status()
    assert status["state"] == "cancelled" and "before training started" in status["error"]
    _cancel_line(capsys.readouterr().err, run.path)


@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_during_training_is_a_cancel_and_a_second_one_stops_at_once(make_synth, tmp_path, monkeypatch,
                                                                          presses):
    """The trainer in this process, Ctrl-C (a real SIGINT to it) right after its first logged step: once,
    the step finishes, last.pt is written and status says where it resumes; twice, it stops at once, the
    run still cancelled (exit 130), for `fmae exec` to resume."""
    import torch

    from fmae.config import load_project
    from fmae.run_config import create_run, resolve_run_config
    from fmae.train import trainer as T

    root = make_synth("bp4d")
    cli = {"model": "vit_tiny", "batch_size": 8, "epochs": 4, "input_size": 32, "num_workers": 0, "log_every": 1,
           "device": "cpu"}
    run = create_run(tmp_path / "runs", resolve_run_config(load_project(cwd=tmp_path), "bp4d", fold=1, root=root,
                                                           labels=root / "labels.jsonl", cli=cli))
    log_train = T.Trainer._log_train

    def log_then_press(self, *args):
        log_train(self, *args)
        if self.step == 1:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(T.Trainer, "_log_train", log_then_press)
    before = signal.getsignal(signal.SIGINT)
    assert T.execute(run.path, quiet=True) == 130
    assert signal.getsignal(signal.SIGINT) == before  # the trainer gave Ctrl-C back
    status = run.read_status()
    assert status["state"] == "cancelled" and status["exit_code"] == 130
    if presses == 1:
        saved = torch.load(run.checkpoints / "last.pt", weights_only=True, map_location="cpu")
        assert saved["step"] == status["step"] == 1
        assert status["error"] == "cancelled (Ctrl-C); resume continues from epoch 1, step 1"
    else:
        assert not (run.checkpoints / "last.pt").exists()  # not even the step's end was waited for
        assert status["error"] == "cancelled (Ctrl-C); resume continues from its last checkpoint"
