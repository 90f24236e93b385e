"""Shared fixtures: the real CLI as a subprocess, and small synthetic datasets made once per session."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_fmae(*args: str | os.PathLike, cwd: Path | None = None, env: dict | None = None,
             timeout: float = 300) -> CliResult:
    """Run `fmae ARGS…` as a real process (argument list, no shell) and capture its output."""
    inherited = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    full_env = {**inherited, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "fmae", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def stand_in_trainer(run: Path) -> subprocess.Popen:
    """A process in its own session holding the run folder's trainer lock with its pid written, as
    `fmae exec` does (a cancel signals only a live trainer), then sleeping for a minute."""
    import time

    lock = Path(run) / ".exec.lock"
    code = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write(str(os.getpid())); f.flush(); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], start_new_session=True)
    while proc.poll() is None and not (lock.exists() and lock.read_text()):
        time.sleep(0.01)
    return proc


def read_csv(text: str) -> list[dict]:
    """`fmae report`'s CSV lines back, with mean / std / lambda_id as floats (None when empty), n and seed
    as ints: what the export tests compare with the report they came from."""
    rows = []
    for rec in csv.DictReader(io.StringIO(text)):
        for key in ("mean", "std", "lambda_id"):
            rec[key] = float(rec[key]) if rec[key] != "" else None
        for key in ("n", "seed"):
            rec[key] = int(rec[key]) if rec[key] != "" else None
        rows.append(rec)
    return rows


def assert_one_line_error(result: CliResult, *needles: str) -> str:
    """Exit 2, one line on stderr, no traceback, naming what it must name."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth")


def _make(synth_root: Path, name: str, *extra: str) -> Path:
    out = synth_root / name
    if not (out / "synth.json").exists():
        from fmae.data.synth.writer import SynthOptions, synthesize
        from fmae.registry import get_dataset

        spec = get_dataset(name)
        opts = dict(frames=8, size=48, seed=3)
        if spec.task == "au":
            opts["subjects"] = spec.num_folds * 2
            opts.update(raw=spec.name in ("bp4d", "disfa"), per_fold_files=True)
        else:
            opts["subjects"] = 12
        synthesize(spec, out, SynthOptions(**opts))
    return out


@pytest.fixture(scope="session")
def make_synth(synth_root):
    return lambda name: _make(synth_root, name)


@pytest.fixture(autouse=True)
def _isolated_tui_state(tmp_path_factory, monkeypatch):
    """The app's remembered choices live in a per-test file, never the user's own (fmae_tui/prefs.py)."""
    monkeypatch.setenv("FMAE_TUI_STATE", str(tmp_path_factory.mktemp("tui-state") / "tui.json"))
