"""A small study as a researcher runs it, through the real app with the real scheduler and trainer
subprocesses: Launch (the plan, its warnings and duration estimate) → the queue → the live Run screen →
Results of a partial study (folds 1–2 of BP4D's 3). First with Pilot (folds 1,2 × seed 0), then in a real
terminal (tmux at 80×24) the same study widened by seed 1 — one tiny study shared by both tests (a file
stays on one pytest worker), four vit_tiny runs of one epoch in all."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from textual.widgets import Input, Select

from conftest import run_fmae
from test_tui_tmux import BIN, Terminal
from tui_support import screen_text, squash, wait_until
from fmae.config import default_config_text
from fmae.metrics import degenerate_threshold
from fmae.registry import get_dataset
from fmae.run_config import config_warnings
from fmae.run_speed import train_images
from fmae.scheduler import stop
from fmae_tui.app import create_app
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.screens.launch import LaunchScreen
from fmae_tui.screens.queue import QueueScreen
from fmae_tui.screens.results import ResultsScreen
from fmae_tui.screens.run import RunScreen

TINY = "synthetic = { subjects = 5, frames = 24, size = 48, seed = 0 }"  # fold 1 trains on 72 frames
BP4D = get_dataset("bp4d").au_names()


class StudyTerminal(Terminal):
    """test_tui_tmux's terminal, with the app's environment set by the command itself: a tmux server that
    is already running would give a new session its own environment, not this process's."""

    def __init__(self, cwd: Path, state_file: Path, width: int = 80, height: int = 24) -> None:
        self.name = f"fmae-study-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        command = ["env", "-u", "FMAE_CONFIG", "-u", "NO_COLOR", f"FMAE_TUI_STATE={state_file}",
                   "TERM=xterm-256color", str(BIN / "fmae-tui")]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        "-c", str(cwd), *command], check=True)

    def home(self) -> None:
        """Escape back to the Runs screen (each escape goes one screen back)."""
        # the title, or the Runs footer while a run's toast sits over the title
        runs = r"fmae — Runs|/ Filter\s+s Sort\s+l Launch"
        for _ in range(5):
            if re.search(runs, self.text()):
                return
            self.keys("Escape", pause=0.6)
        self.wait_for(runs, timeout=5)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One project for the file's tests: fmae.toml with tiny synthetic BP4D and one CPU slot."""
    folder = tmp_path_factory.mktemp("study")
    config = folder / "fmae.toml"
    config.write_text(re.sub(r"synthetic = \{[^}]*\}", TINY, default_config_text()), encoding="utf-8")
    yield config, folder / "runs"
    if (folder / "runs").is_dir():
        run_fmae("queue", "cancel", "--all", "--config", config, cwd=folder)
        stop(folder / "runs", wait=30)


def run_folders(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) if runs.is_dir() else []


def state(run: Path) -> str:
    try:
        return json.loads((run / "status.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return "?"


def config_of(run: Path) -> dict:
    import tomllib

    from fmae.run_spec import flatten

    return flatten(tomllib.loads((run / "run.toml").read_text())["config"])


def expected_partial(runs: Path) -> tuple[float, int]:
    """Independently of fmae.report: per seed each AU's best-threshold F1 averaged over its folds (×100),
    avg over AUs; the mean over seeds — and the number of seeds."""
    per_seed: dict[int, list[dict]] = {}
    for run in run_folders(runs):
        if state(run) == "done":
            best = json.loads((run / "summary.json").read_text())["best"]["f1_best"]
            per_seed.setdefault(int(config_of(run)["seed"]), []).append(best)
    avgs = [statistics.fmean(statistics.fmean(f[a] for f in folds) * 100 for a in BP4D) for folds in per_seed.values()]
    return statistics.fmean(avgs), len(avgs)


async def type_into(pilot, screen, selector: str, text: str) -> None:
    field = screen.query_one(selector, Input)
    field.focus()
    await pilot.pause()
    await pilot.press("end", *["backspace"] * len(field.value), *text)


async def test_launch_a_partial_study_watch_it_and_read_it_in_results(study) -> None:
    config, runs = study
    app = create_app(config, runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen.previews > 0, what="launch")
        launch: LaunchScreen = app.screen
        launch.query_one("#model", Select).value = "vit_tiny"
        await type_into(pilot, launch, "#epochs", "1")
        await type_into(pilot, launch, "#folds", "1,2")
        await type_into(pilot, launch, "#seeds", "0")
        await type_into(pilot, launch, "#lambdas", "0")
        await wait_until(pilot, lambda: launch.plan is not None and len(launch.plan.to_add) == 2
                         and launch._timer is None, what="2-cell plan")
        text = squash(screen_text(app))
        assert squash("folds 1,2 × seeds 0 × λ 0 = 2 cell(s): 2 to add") in text
        # Nothing ran before: nothing to estimate from, and the plan says so.
        assert squash("time: no past run of vit_tiny at 64 px on cpu to estimate from") in text
        # The engine's own warnings for this config (a 1-epoch run inside the recipe's warmup), in the plan.
        cell = launch.plan.to_add[0].values
        steps = train_images(cell) // int(cell["batch_size"]) if train_images(cell) else None
        assert launch.warnings == config_warnings(cell, steps)
        for warning in launch.warnings:
            assert squash(f"warning: {warning}") in text

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        assert "Queue 2 runs of bp4d?" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and len(launch.queued) == 2,
                         timeout=90, what="queue screen")
        queue: QueueScreen = app.screen
        first = next(j for j in launch.queued if j.fold == 1)
        await wait_until(pilot, lambda: state(Path(first.path)) in ("running", "done"), timeout=90, what="running")

        # The first job's live Run screen, opened from the Queue: it shows the run running, then done.
        table = queue.query_one("#queue-table")
        await wait_until(pilot, lambda: str(first.id) in [str(k.value) for k in table.rows], what="job row")
        table.move_cursor(row=table.get_row_index(str(first.id)))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.updates > 0, what="run screen")
        run_screen: RunScreen = app.screen
        assert run_screen.path == Path(first.path)
        assert re.search(r"\b(running|done)\b", str(run_screen.query_one("#run-head").render()))
        await wait_until(pilot, lambda: state(Path(first.path)) == "done", timeout=120, what="first run done")
        await wait_until(pilot, lambda: re.search(r"\bdone\b", str(run_screen.query_one("#run-head").render())),
                         timeout=10, what="the Run screen shows done")
        await wait_until(pilot, lambda: all(state(p) in ("done", "failed") for p in run_folders(runs)),
                         timeout=120, what="both runs ended")
        assert [state(p) for p in run_folders(runs)] == ["done", "done"], [p / "train.log" for p in run_folders(runs)]

        # Results: the partial group, labelled with what it holds, with its numbers, n and grid.
        await pilot.press("escape", "R")
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen.builds > 0
                         and app.screen.report is not None, what="results")
        results: ResultsScreen = app.screen
        await pilot.pause()
        rows = {results._rows[k].label: k for k in results._rows if k.startswith("row")}
        assert list(rows) == ["vit_tiny fmae λ=0 · folds 1–2 of 3, seed 0"]
        key = rows["vit_tiny fmae λ=0 · folds 1–2 of 3, seed 0"]
        group = str(results.table.get_cell(key, "group")).splitlines()
        assert group[1] == "folds 1–2 of 3, seed 0 (partial)" and group[-1] == "Δ vs paper: FMAE"
        mean, n = expected_partial(runs)
        assert str(results.table.get_cell(key, "n")) == str(n) == "1"
        degenerate = [p for p in run_folders(runs) if degenerate_threshold(
            json.loads((p / "summary.json").read_text())["best"]["best_threshold"])]
        assert (f"⚠ {len(degenerate)} degenerate" in group[0]) == bool(degenerate), group
        assert str(results.table.get_cell(key, "avg")).splitlines()[0] == f"{mean:.1f}"
        assert "F1 best-threshold (tuned on test) (%)" in screen_text(app)
        grid = str(results.query_one("#results-grid").render())
        assert "2 done, 1 missing of 3 cells" in grid and re.search(r"seed 0\s+f1 ✓ f2 ✓ f3 ·", grid), grid

        # Launch again: the last plan is back (not vit_base / 20 epochs), and now the two finished runs
        # give the study's duration at the speed they measured.
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen.plan is not None
                         and app.screen._timer is None, what="launch again")
        launch = app.screen
        assert [launch._value(f) for f in ("model", "epochs", "folds", "seeds", "lambdas")] == \
            ["vit_tiny", "1", "1,2", "0", "0"]
        assert len(launch.plan.skipped) == 2
        await type_into(pilot, launch, "#seeds", "1")
        await wait_until(pilot, lambda: launch.plan is not None and len(launch.plan.to_add) == 2
                         and launch._timer is None and launch.estimate is not None
                         and launch.estimate.seconds is not None, what="an estimate")
        assert launch.estimate.speed.runs and set(launch.estimate.speed.runs) <= {p.name for p in run_folders(runs)}
        assert re.search(r"time: ≈ \d+ (s|min) for 2 runs one after another", " ".join(screen_text(app).split()))
        await pilot.press("escape")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed: the terminal test needs it")
def test_the_same_study_widened_in_a_real_terminal_at_80x24(study, tmp_path: Path) -> None:
    """The study of the test above (when it ran first) gets seed 1 from Launch in tmux; the Run screen
    of one of the new runs is watched live; Results shows the partial group at 80 columns, nothing cut."""
    config, runs = study
    before = {p.name for p in run_folders(runs)}
    seeds_before = {int(config_of(p)["seed"]) for p in run_folders(runs) if state(p) == "done"}
    state_file = tmp_path / "tui.json"  # this terminal's own remembered choices, never the user's
    term = StudyTerminal(config.parent, state_file)
    try:
        term.wait_for(r"fmae — (Datasets|Runs)", timeout=30)
        term.home()
        term.keys("l")
        term.wait_for(r"ctrl\+s: queue \d+ run")
        term.keys("Tab", "Tab", "Enter", "Up", "Up", "Enter")  # dataset → recipe → model: vit_tiny
        term.wait_for(r"model\s+vit_tiny")
        term.keys("Tab", "1", "Tab", "1,2", "Tab", "1", "Tab", "0")  # epochs 1, folds 1,2, seed 1, λ 0
        screen = term.wait_for(r"folds 1,2 × seeds 1 × λ 0 = 2 cell\(s\): 2 to add")
        assert re.search(r"time: (≈ \d+ (s|min) for 2 runs|no past run of vit_tiny)", screen), screen
        term.keys("C-s")
        term.wait_for(r"Queue 2 runs of bp4d\?")
        term.keys("y")
        term.wait_for(r"fmae — Queue", timeout=60)

        # The Run screen of the new fold-1 run, found with the Runs screen's filter, watched until done.
        term.home()
        term.keys("/")
        term.keys("seed:1 fold:1", "Enter")
        term.wait_for(r"seed:1 fold:1")
        term.keys("Enter")
        term.wait_for(r"Run \S+-bp4d-f1-s1-", timeout=20)
        term.wait_for(r"\b(queued|running)\b|\bdone\b", timeout=60)
        new = [p for p in run_folders(runs) if p.name not in before]
        assert len(new) == 2
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not all(state(p) in ("done", "failed") for p in new):
            time.sleep(1)
        assert [state(p) for p in new] == ["done", "done"]
        term.wait_for(r"\bdone\b", timeout=15)

        # Results at 80×24: the group and what it holds, n, the avg (a number, not "–").
        term.home()
        term.keys("R")
        seeds = sorted(seeds_before | {1})
        held = "seeds 0–1" if seeds == [0, 1] else "seed 1"
        term.wait_for(re.escape(f"folds 1–2 of 3, {held} (partial)"), timeout=30)
        # the runs that just ended are told in toasts over the head for a few seconds: read it after them
        screen = term.wait_for(re.escape("F1 best-threshold (tuned on test)"), timeout=15)
        assert f"folds 1–2 of 3, {held} (partial)" in screen
        mean, n = expected_partial(runs)
        assert n == len(seeds)
        line = next(x for x in screen.splitlines() if "vit_tiny fmae λ=0" in x)
        assert re.search(rf"vit_tiny fmae λ=0.*\s{n}\s+{re.escape(f'{mean:.1f}')}", line), screen
        assert "F1 best-threshold (tuned on test)" in screen
        # every line of the head whole at 80 columns (the old one was cut mid-sentence)
        assert re.search(r"\d note\(s\) on these rows: n shows them", screen), screen
        assert re.search(r"seed 1\s+f1 ✓ f2 ✓ f3 ·", screen), screen
        term.keys("q")
    finally:
        term.close()
