"""The Launch, Queue and GPUs screens with the real queue and the real detached scheduler: a matrix
launched from the app lands as run folders and queue rows, runs on the CPU slot, shows on the GPUs screen
and is cancelled from the Queue screen; the app starts the scheduler for queued work it finds."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from textual.message import Message
from textual.notifications import Notify
from textual.widgets import Input, Select

from conftest import run_fmae
from tui_support import screen_text, squash, wait_until
from fmae.config import default_config_text
from fmae.scheduler import holder, stop
from fmae_tui.app import create_app
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.screens.gpus import GpusScreen, bar
from fmae_tui.screens.launch import LaunchScreen
from fmae_tui.screens.queue import QueueScreen

TINY = "synthetic = { subjects = 5, frames = 24, size = 48, seed = 0 }"  # fold 1 trains on 72 frames ≥ batch 64


@pytest.fixture
def project(tmp_path: Path):
    """fmae.toml with tiny synthetic data and one CPU slot; the scheduler is stopped afterwards."""
    config = tmp_path / "fmae.toml"
    config.write_text(re.sub(r"synthetic = \{[^}]*\}", TINY, default_config_text()), encoding="utf-8")
    yield config, tmp_path / "runs"
    if (tmp_path / "runs").is_dir():
        run_fmae("queue", "cancel", "--all", "--config", config, cwd=tmp_path)
        stop(tmp_path / "runs", wait=30)


async def type_into(pilot, screen, selector: str, text: str) -> None:
    field = screen.query_one(selector, Input)
    field.focus()
    await pilot.pause()
    await pilot.press("end", *["backspace"] * len(field.value), *text)


def _priority(runs: Path, run_id: str) -> int:
    with sqlite3.connect(runs / "queue.sqlite") as db:
        return db.execute("SELECT priority FROM jobs WHERE run_id = ?", (run_id,)).fetchone()[0]


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


async def test_launch_a_matrix_see_it_run_and_cancel_it(project, tmp_path: Path) -> None:
    config, runs = project
    seen: list[Message] = []
    app = create_app(config, runs)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen.previews > 0, what="launch")
        await pilot.pause()  # the plan's lines laid out: its box grows from the one line it had
        launch = app.screen
        # The paper's BP4D recipe fills the fields: every fold, fmae.toml's seeds, λ 0, vit_base, 20 epochs.
        assert launch.query_one("#folds", Input).value == "1,2,3"
        assert launch.query_one("#seeds", Input).value == "0,1,2"
        assert launch.query_one("#lambdas", Input).value == "0"
        assert launch.query_one("#epochs", Input).value == "20"
        assert launch.query_one("#gpus", Input).value == "0"  # no GPU here
        text = screen_text(app)
        assert "bp4d matrix: folds 1,2,3 × seeds 0,1,2 × λ 0 = 9 cell(s): 9 to add, 0 skipped" in text
        assert "no GPU" in text and "1 CPU slot" in text

        # ctrl+t: the newcomer's first run — vit_tiny, 1 epoch, fold 1, seed 0; ctrl+r: the recipe again.
        previews = launch.previews
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: launch.previews > previews, what="try-it preview")
        assert "folds 1 × seeds 0 × λ 0 = 1 cell(s): 1 to add" in screen_text(app)
        assert launch.query_one("#model", Select).value == "vit_tiny"
        previews = launch.previews
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: launch.previews > previews, what="recipe preview")
        assert "= 9 cell(s): 9 to add" in screen_text(app), screen_text(app)
        assert launch.query_one("#recipe", Select).value == "fmae"  # not the demo's, which ctrl+t chose

        # A wrong field says which and what to do; nothing can be queued meanwhile.
        previews = launch.previews
        await type_into(pilot, launch, "#seeds", "0,x")
        await wait_until(pilot, lambda: launch.previews > previews, what="error preview")
        assert "seeds0,x:expectedwholenumbersseparatedbycommas" in squash(screen_text(app))
        assert launch.plan is None

        # 2 folds × 1 seed × 2 λ of vit_tiny for many epochs (so the first is still running when cancelled).
        launch.query_one("#model", Select).value = "vit_tiny"
        await type_into(pilot, launch, "#seeds", "0")
        await type_into(pilot, launch, "#folds", "1,2")
        await type_into(pilot, launch, "#lambdas", "0,2")
        await type_into(pilot, launch, "#epochs", "500")
        previews = launch.previews
        await wait_until(pilot, lambda: launch.previews > previews and launch.plan is not None
                         and len(launch.plan.to_add) == 4, what="4-cell plan")
        assert "folds 1,2 × seeds 0 × λ 0,2 = 4 cell(s): 4 to add" in screen_text(app)

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        assert "Queue 4 runs of bp4d?" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.polls > 0
                         and app.screen.query_one("#queue-table").row_count == 4, timeout=60, what="queue screen")

        # The same result as `fmae queue add`: run folders with the asked-for config, queue rows, a scheduler.
        folders = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
        assert len(folders) == 4
        configs = [(p / "run.toml").read_text() for p in folders]
        assert all('model = "vit_tiny"' in c and "epochs = 500" in c for c in configs)
        with sqlite3.connect(runs / "queue.sqlite") as db:
            rows = db.execute("SELECT run_id, fold, seed, lambda_id FROM jobs ORDER BY id").fetchall()
        assert sorted((f, s, lam) for _, f, s, lam in rows) == [(1, 0, 0.0), (1, 0, 2.0), (2, 0, 0.0), (2, 0, 2.0)]
        assert {r[0] for r in rows} == {p.name for p in folders}
        assert any("queued 4 job(s)" in m.notification.message for m in seen if isinstance(m, Notify))
        assert holder(runs) is not None

        # Launching the same matrix again would add nothing: its cells are skipped, with their runs named.
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen.plan is not None,
                         what="launch again")
        app.screen.query_one("#model", Select).value = "vit_tiny"
        await type_into(pilot, app.screen, "#seeds", "0")
        await type_into(pilot, app.screen, "#folds", "1,2")
        await type_into(pilot, app.screen, "#lambdas", "0,2")
        await type_into(pilot, app.screen, "#epochs", "500")
        await wait_until(pilot, lambda: app.screen.plan is not None and len(app.screen.plan.skipped) == 4,
                         what="all skipped")
        assert "0 to add, 4 skipped" in screen_text(app)

        # The first job starts on the CPU slot; the GPUs screen says there is no GPU and who holds cpu0.
        first = runs / rows[0][0]
        await wait_until(pilot, lambda: status(first)["state"] == "running", timeout=60, what="first job running")
        await pilot.press("escape", "g")  # on Launch, letters are typing: leave it first
        await wait_until(pilot, lambda: isinstance(app.screen, GpusScreen) and app.screen.polls > 0, what="GPUs")
        await wait_until(pilot, lambda: rows[0][0].split("-", 1)[1][:20] in screen_text(app), what="cpu0 holder")
        text = screen_text(app)
        assert "no GPU here" in text and "cpu0" in text

        # Cancel the last (queued) job, then the running one, each after a confirmation.
        await pilot.press("j")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.polls > 0, what="queue")
        queue = app.screen
        table = queue.query_one("#queue-table")
        table.move_cursor(row=3)
        await pilot.pause()
        last = runs / queue.selected["run_id"]
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="cancel confirmation")
        await pilot.press("n")  # no: nothing changes
        await pilot.pause(0.2)
        assert status(last)["state"] == "queued"
        # + raises a queued job's priority at once (nothing is lost: - undoes it); the job moves up the line
        await pilot.press("plus")
        await wait_until(pilot, lambda: _priority(runs, last.name) == 1, what="priority 1")
        assert not isinstance(app.screen, ConfirmScreen)
        await wait_until(pilot, lambda: queue.selected is not None and queue.selected["run_id"] == last.name
                         and table.cursor_row == 1, what="the cursor follows the job to its new place")
        text = screen_text(app)
        assert "queued p1" in text and "needsaCPUslot" in squash(text), text
        await pilot.press("c", "y")
        await wait_until(pilot, lambda: status(last)["state"] == "cancelled", what="queued job cancelled")
        table.move_cursor(row=0)  # running first
        await pilot.pause()
        assert queue.selected["run_id"] == first.name
        assert "needsaCPUslot" not in squash(screen_text(app))  # only a queued job waits for one
        await pilot.press("c", "y")
        await wait_until(pilot, lambda: status(first)["state"] == "cancelled", timeout=60, what="running job cancelled")
        await wait_until(pilot, lambda: "cancelled" in str(table.get_cell(str(queue.selected["id"]), "state")),
                         timeout=10, what="table shows cancelled")

        # A done or cancelled job cannot be cancelled again: one clear line.
        seen.clear()
        await pilot.press("c")
        await pilot.pause(0.2)
        errors = [m.notification.message for m in seen if isinstance(m, Notify)]
        assert any("only queued or running jobs can be cancelled" in e for e in errors), errors


async def test_the_app_starts_the_scheduler_for_queued_work(project, tmp_path: Path, make_synth) -> None:
    config, runs = project
    root = make_synth("bp4d")
    added = run_fmae("queue", "add", "bp4d", "--folds", "1", "--seeds", "0", "--model", "vit_tiny", "--epochs", "500",
                     "--root", root, "--labels", root / "labels.jsonl", "--no-scheduler", "--config", config,
                     cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert holder(runs) is None
    seen: list[Message] = []
    app = create_app(config, runs)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await wait_until(pilot, lambda: any("scheduler started" in m.notification.message
                                            for m in seen if isinstance(m, Notify)), timeout=20, what="started")
    # Leaving the app leaves the scheduler (and its run) alone.
    assert holder(runs) is not None


def test_gauge() -> None:
    assert bar(0.0, 4) == "░░░░" and bar(0.5, 4) == "██░░" and bar(1.5, 4) == "████"


async def test_leaving_launch_while_it_queues_still_starts_the_scheduler(project, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Making the synthetic data takes seconds on a real config: a user who presses esc meanwhile left a
    # screen whose worker then could not reach the app — jobs queued, no scheduler, the app "generating".
    import time

    import fmae.queue_ops

    config, runs = project
    real_add = fmae.queue_ops.add_matrix

    def slow_add(*args, **kwargs):
        time.sleep(1.0)  # the data being made
        return real_add(*args, **kwargs)

    monkeypatch.setattr(fmae.queue_ops, "add_matrix", slow_add)
    seen: list[Message] = []
    app = create_app(config, runs)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen.plan is not None)
        previews = app.screen.previews
        await pilot.press("ctrl+t")  # one cell: vit_tiny, 1 epoch
        await wait_until(pilot, lambda: app.screen.previews > previews and app.screen.plan is not None)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y", "escape")
        assert not isinstance(app.screen, LaunchScreen)
        await wait_until(pilot, lambda: holder(runs) is not None and not app.generating, timeout=30,
                         what="the scheduler started and the app no longer generating")
        await pilot.pause()
        told = [m.notification.message for m in seen if isinstance(m, Notify)]
        assert any("queued 1 job(s)" in m and "scheduler started" in m for m in told), told
