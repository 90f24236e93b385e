"""What the app tests share: the screen as text, waiting for a condition while the app runs, a project
with tiny synthetic data, and opening its Launch screen or a run's Run screen."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from textual.app import App

from fmae.config import default_config_text

TINY_SYNTHETIC = "synthetic = { subjects = 5, frames = 4, size = 32, seed = 0 }"


def screen_text(app: App) -> str:
    """The characters on the terminal right now, modal screens and their background included."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True,
                      color_system=None)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def squash(text: str) -> str:
    """Text without whitespace: long paths wrap wherever the terminal's width falls."""
    return re.sub(r"\s+", "", text)


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 8.0, what: str = "") -> None:
    """Let the app run until `condition()` holds; fail with the screen's text after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out: {what or 'condition not met'}\n{screen_text(pilot.app)}")


def tiny_project(folder: Path) -> Path:
    """fmae.toml in `folder`: the default configuration, every synthetic copy tiny (5 subjects × 4 frames)."""
    config = folder / "fmae.toml"
    config.write_text(re.sub(r"synthetic = \{[^}]*\}", TINY_SYNTHETIC, default_config_text()), encoding="utf-8")
    return config


async def open_launch(pilot):
    """`l`, and the Launch screen once its first plan is drawn."""
    from fmae_tui.screens.launch import LaunchScreen

    await pilot.press("l")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, LaunchScreen) and pilot.app.screen.previews > 0,
                     what="launch")
    return pilot.app.screen


async def open_run(pilot, run_id: str | None = None):
    """Enter on the Runs table (on `run_id`'s row, else the cursor's), and the Run screen once its first
    look at the run folder is shown."""
    from fmae_tui.screens.run import RunScreen
    from fmae_tui.widgets.runs_table import RunsTable

    app = pilot.app
    if run_id is not None:
        table = app.screen.query_one(RunsTable)
        table.move_cursor(row=table.get_row_index(run_id))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.updates > 0, what="the Run screen")
    return app.screen
