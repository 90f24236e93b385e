"""The real `fmae-tui` in a real terminal (tmux at 80×24), driven by keystrokes as a person would: open
it on a fresh project, launch one vit_tiny run on synthetic data, watch it finish on the Queue screen and
read its per-AU F1 table on the Run screen."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fmae.config import default_config_text

BIN = Path(sys.executable).parent
TINY = "synthetic = { subjects = 5, frames = 24, size = 48, seed = 0 }"  # fold 1 trains on 72 frames

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed: the terminal test needs it")


class Terminal:
    """One tmux server of its own (`-L`): a session of a server already running (the user's, another
    test's) would take that server's environment, not this test's (its isolated app state, above all)."""

    def __init__(self, cwd: Path, width: int = 80, height: int = 24) -> None:
        self.name = f"fmae-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if k not in ("FMAE_CONFIG", "TMUX", "NO_COLOR")}
        subprocess.run([*self.tmux, "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        "-c", str(cwd), str(BIN / "fmae-tui")], check=True, env={**env, "TERM": "xterm-256color"})

    @property
    def tmux(self) -> list[str]:
        return ["tmux", "-L", self.name]

    def keys(self, *keys: str, pause: float = 0.4) -> None:
        for key in keys:  # one at a time: a key sent while the app is busy must not land in another field
            subprocess.run([*self.tmux, "send-keys", "-t", self.name, key], check=True)
            time.sleep(pause)

    def text(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True,
                              check=True).stdout

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.text()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on screen after {timeout:.0f} s:\n{self.text()}")

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.fixture
def project(tmp_path: Path):
    (tmp_path / "fmae.toml").write_text(re.sub(r"synthetic = \{[^}]*\}", TINY, default_config_text()),
                                        encoding="utf-8")
    yield tmp_path
    subprocess.run([str(BIN / "fmae"), "scheduler", "stop"], cwd=tmp_path, capture_output=True)


def test_launch_one_run_watch_it_finish_and_read_its_f1_table(project: Path) -> None:
    term = Terminal(project)
    try:
        term.wait_for(r"fmae — Datasets", timeout=30)  # a fresh project opens where setup starts
        term.keys("l")
        term.wait_for(r"ctrl\+s: queue 9 runs")  # the paper's BP4D recipe: 3 folds × fmae.toml's 3 seeds
        # dataset → recipe → model (a pop-up list: up twice from vit_base is vit_tiny)
        term.keys("Tab", "Tab", "Enter", "Up", "Up", "Enter")
        term.wait_for(r"model\s+vit_tiny")
        term.keys("Tab", "1", "Tab", "1", "Tab", "0")  # epochs 1, fold 1, seed 0 (typing replaces the field)
        term.wait_for(r"folds 1 × seeds 0 × λ 0 = 1 cell\(s\): 1 to add")
        term.keys("C-s")
        term.wait_for(r"Queue 1 run of bp4d\?")
        term.keys("y")
        term.wait_for(r"fmae — Queue", timeout=60)  # after making the synthetic copy
        term.wait_for(r"\b1\s+done\s+bp4d\s+f1 s0 λ0\s+tiny\s+100% e1/1", timeout=240)

        term.keys("Escape")  # back where the queue was launched from, then home: the Runs screen
        term.wait_for(r"fmae — Launch")
        term.keys("Escape")
        screen = term.wait_for(r"done\s+AU\s+bp4d\s+f1 s0 λ0\s+tiny\s+1/1\s+(0\.\d{3} F1 best-thr|⚠ degenerate)")
        assert "? Help" in screen.splitlines()[-1] and "q Quit" in screen.splitlines()[-1]  # the footer fits
        term.keys("Enter", "2")  # open it; 2 = the per-AU scores tab
        screen = term.wait_for(r"AU24\b\s+\d\.\d{3}")  # the last row: the table is drawn whole
        for au in ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"):
            assert re.search(rf"\b{au}\b", screen), f"{au} missing:\n{screen}"
        assert "F1@0.5" in screen
        term.keys("q")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run([*term.tmux, "has-session", "-t", term.name],
                                                              capture_output=True).returncode == 0:
            time.sleep(0.2)
    finally:
        term.close()
    runs = [p for p in (project / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1 and '"done"' in (runs[0] / "status.json").read_text()
