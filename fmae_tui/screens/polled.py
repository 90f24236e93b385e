"""A screen that looks again every few seconds while it is on top, and not at all while another screen
covers it: the Queue, GPUs and Results screens."""

from __future__ import annotations

from fmae_tui.screens.base import FmaeScreen


class PolledScreen(FmaeScreen):
    POLL_S = 1.0  # seconds between looks

    def on_mount(self) -> None:
        self._poll_timer = self.set_interval(self.POLL_S, self.poll, pause=True)

    def on_screen_resume(self) -> None:
        self.poll()
        self._poll_timer.resume()

    def on_screen_suspend(self) -> None:
        self._poll_timer.pause()

    def poll(self) -> None:
        """Start a look (a worker); called by the timer and when the screen comes back on top."""
        raise NotImplementedError
