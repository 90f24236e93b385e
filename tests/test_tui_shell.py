"""The app around the screens: `esc` goes back to the screen the user came from, every footer fits 80
columns with no key or word cut, and toasts stay off the data and status lines. Also the Run screen's
log wrapping, per-AU curves, one-point curves and cancel."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from fmae.queue import Queue
from fmae_tui.app import create_app
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.screens.datasets import DatasetsScreen
from fmae_tui.screens.gpus import GpusScreen
from fmae_tui.screens.launch import LaunchScreen
from fmae_tui.screens.queue import QueueScreen
from fmae_tui.screens.results import ResultsScreen
from fmae_tui.screens.run import RunScreen
from fmae_tui.screens.runs import RunsScreen
from fmae_tui.widgets.curve_plot import CurvePlot
from test_tui_runs import _test_record, open_runs, runs  # noqa: F401 (runs is a fixture)
from tui_support import open_run, screen_text, squash, wait_until


def footer_problems(app) -> list[str]:
    """Each footer key whose "key description" is not whole on the footer's line, and the line itself."""
    line = screen_text(app).rstrip("\n").splitlines()[-1]
    footer = app.screen.query_one(Footer)
    keys = [k for k in footer.query(FooterKey)]
    shown = [f"{k.key_display} {k.description}" for k in keys]
    missing = [s for s in shown if s not in line]
    return missing + ([] if keys else ["no keys"]) if missing or not keys else []


async def test_esc_goes_back_to_the_screen_before(runs, tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await pilot.press("j")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
        await pilot.press("g")
        await wait_until(pilot, lambda: isinstance(app.screen, GpusScreen))
        await pilot.press("escape")
        assert isinstance(app.screen, QueueScreen)  # not home: the screen the user came from
        await pilot.press("d", "escape")
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("g", "j")  # Queue is already open below: back to it, not a second copy
        assert isinstance(app.screen, QueueScreen) and sum(isinstance(s, QueueScreen) for s in app.screen_stack) == 1
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("enter")  # a run, then Results from it, then back twice
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen))
        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("escape")  # home: nothing under it
        assert isinstance(app.screen, RunsScreen)


async def test_every_footer_fits_80_columns(runs, tmp_path: Path) -> None:
    async def fits(name: str) -> None:  # the footer draws a moment after its screen: wait, then judge
        await wait_until(pilot, lambda: not footer_problems(app), timeout=3,
                         what=f"{name}: footer keys cut or missing {footer_problems(app)}")

    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await fits("Runs")
        await pilot.press("f")  # a filter on: the bar says how to clear it, the footer stays as it was
        await pilot.pause()
        await fits("Runs filtered")
        assert "esc: clear filters" in screen_text(app).splitlines()[1]
        await pilot.press("escape", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen))
        await fits("Run")
        for key, kind in (("j", QueueScreen), ("g", GpusScreen), ("d", DatasetsScreen), ("R", ResultsScreen),
                          ("escape", None), ("l", LaunchScreen)):
            await pilot.press(key)
            if kind is not None:
                await wait_until(pilot, lambda: isinstance(app.screen, kind), what=kind.__name__)
                await fits(kind.__name__)


async def test_toasts_leave_the_data_and_status_lines(runs, tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await open_runs(app, pilot)
        app.notify("a message\nof two lines", title="hello")
        await pilot.pause(0.3)
        toast = app.screen.query("Toast").first()
        top = toast.region.y
        bottom = top + toast.region.height
        table = app.screen.query_one("#runs")
        info = app.screen.query_one("#run-info")
        assert bottom <= table.region.y + 1, (toast.region, table.region)  # over the title, bar and header
        assert top < info.region.y


async def test_log_wraps_and_toggles(runs, tmp_path: Path) -> None:
    run = runs["running"]
    tail = "END-OF-A-LONG-LINE"
    run.log_path.write_text("short line\n" + "x" * 150 + tail + "\n", encoding="utf-8")
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await pilot.press("enter", "3")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and "short line" in screen_text(app))
        assert tail in squash(screen_text(app))  # wrapped: the end of the long line is on screen
        await pilot.press("w")
        await pilot.pause(0.3)
        assert not app.screen.wrap and tail not in squash(screen_text(app))
        await pilot.press("w")
        await pilot.pause(0.3)
        assert tail in squash(screen_text(app))


async def test_per_au_curves_and_one_point_curves(runs, tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await open_run(pilot, runs["running"].id)  # one test epoch so far
        score = app.screen.query_one("#plot-score", CurvePlot)
        assert score.points == 2
        text = screen_text(app)
        assert "(nothing yet)" not in text
        assert "• F1@0.5" in score.legend and "x F1 best-thr" in score.legend  # under the plot, not over it
        assert score.legend in text
        assert text.count("•") >= 2  # the single point is drawn (and named)
        await pilot.press("a")
        text = screen_text(app)
        assert re.search(r"AU1\s+\S+\s+0\.210\s+0\.210 \(1\)", text), text  # 0.41 - 0.2 at epoch 1
        assert "F1 best-thr" in text and "tuned on the test fold" in text


async def test_cancel_from_the_run_screen_asks_then_signals(tmp_path: Path) -> None:
    """A running queue job (a real process group standing in for the trainer): c asks, y sends SIGTERM
    through queue_ops.cancel_job; when the run then ends done, the screen says the cancel came too late."""
    import signal

    from conftest import stand_in_trainer
    from fmae.runs import RunDir, make_run_id

    root = tmp_path / "runs"
    run = RunDir.create(root, make_run_id("bp4d", "vit_tiny", 0, fold=1, lambda_id=0.0),
                        {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 0.0,
                         "model": "vit_tiny", "recipe": "fmae"}, {})
    queue = Queue(root)
    job = queue.add(run)
    proc = stand_in_trainer(run.path)
    seen: list = []
    try:
        assert queue.claim(job.id, "cpu0", proc.pid, proc.pid)
        run.mark_running(pid=proc.pid, pgid=proc.pid, host=os.uname().nodename, gpus="")
        run.heartbeat(epoch=1, epochs=1, step=3, total_steps=4)
        app = create_app(runs_dir=root)
        async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
            await open_runs(app, pilot)
            await open_run(pilot)
            await pilot.press("c")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert f"Cancel job {job.id}?" in screen_text(app)
            await pilot.press("n")
            await pilot.pause(0.2)
            assert proc.poll() is None and queue.get(job.id).cancel_requested is None
            await pilot.press("c", "y")
            await wait_until(pilot, lambda: proc.poll() is not None)
            assert proc.returncode == -signal.SIGTERM
            said = [m.notification.message for m in seen if type(m).__name__ == "Notify"]
            assert any("SIGTERM sent" in s for s in said), said
            run.mark_ended("done", exit_code=0)  # the last step finished as the signal came
            await wait_until(pilot, lambda: any("finished before the cancel arrived" in m.notification.message
                                                for m in seen if type(m).__name__ == "Notify"))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
