"""An editor for a run's notes.md: ctrl+s asks to save, escape closes (a second escape if unsaved)."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class NotesEditor(TextArea):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save notes", tooltip="Write notes.md (atomically) and close the editor"),
        Binding("escape", "close", "Close", tooltip="Close the editor; unsaved changes need a second escape"),
    ]

    class Submitted(Message):
        """ctrl+s: the text to save."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Closed(Message):
        """Escape: leave without saving."""

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, **kwargs)
        self._original = ""
        self._warned = False

    def start(self, text: str) -> None:
        """Edit `text` (the notes as on disk now)."""
        self._original = text
        self._warned = False
        self.load_text(text)
        self.focus()

    def action_save(self) -> None:
        self.post_message(self.Submitted(self.text))

    def action_close(self) -> None:
        if self.text != self._original and not self._warned:
            self._warned = True
            self.notify("unsaved notes: ctrl+s saves, escape again discards", severity="warning")
            return
        self.post_message(self.Closed())
