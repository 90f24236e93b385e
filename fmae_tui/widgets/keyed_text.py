"""A table cell's text that also names the row it sits in, so DataTable.sort can order rows by keys
the table does not hold (its sort key function sees cells, never row keys)."""

from __future__ import annotations

from rich.text import Text


class KeyedText(Text):
    def __init__(self, text: str, style: str = "", *, key: str) -> None:
        super().__init__(text, style=style, end="")
        self.key = key
