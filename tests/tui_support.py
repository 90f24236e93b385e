"""What the app tests share: the screen as text, and waiting for a condition while the app runs."""

from __future__ import annotations

import io
import re
import time
from typing import Callable

from rich.console import Console
from textual.app import App


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
