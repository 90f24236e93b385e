"""A one-line input under a label ("filter", "tags"): enter submits, escape dismisses."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class PromptBar(Input):
    BINDINGS = [
        Binding("enter", "submit", "Apply", tooltip="Apply what is typed"),
        Binding("escape", "dismiss", "Cancel", tooltip="Close without applying"),
    ]

    class Dismissed(Message):
        """Escape in the bar."""

        def __init__(self, bar: PromptBar) -> None:
            super().__init__()
            self.bar = bar

        @property
        def control(self) -> PromptBar:
            return self.bar

    def action_dismiss(self) -> None:
        self.post_message(self.Dismissed(self))
