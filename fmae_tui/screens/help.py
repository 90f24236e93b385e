"""The Help screen: every key of the screen it was opened from, read from that screen's live bindings so
it never goes stale as screens gain keys."""

from __future__ import annotations

from typing import Callable, Mapping

from rich.columns import Columns
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    """Lists keys grouped by action: the shown (footer) keys first, then navigation and the rest."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", tooltip="Close this help"),
        Binding("question_mark", "dismiss", "Close", key_display="?", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, bindings: Mapping[str, ActiveBinding], key_display: Callable[[Binding], str]) -> None:
        super().__init__()
        self._rows = _key_rows(bindings, key_display)

    def compose(self) -> ComposeResult:
        main = Table.grid(padding=(0, 2))
        main.add_column(style="bold", no_wrap=True)
        main.add_column(no_wrap=True)
        main.add_column()
        more: list[Text] = []  # moving around and the like: compact columns of "key what"
        for keys, description, tooltip, shown in self._rows:
            if shown or tooltip:
                main.add_row(Text(keys), Text(description), Text(tooltip))
            elif description.lower() != keys.lower():  # "home: Home" says nothing
                more.append(Text.assemble((keys, "bold"), f" {description.lower()}"))
        with VerticalScroll(id="help") as box:
            box.border_title = "Keys"
            box.border_subtitle = "esc, ? or q: close"
            yield Static(main, id="help-keys")
            if more:
                yield Static(Columns(more, padding=(0, 3), equal=True), id="help-more")


def _key_rows(bindings: Mapping[str, ActiveBinding],
              key_display: Callable[[Binding], str]) -> list[tuple[str, str, str, bool]]:
    """One row per (node, action): its keys joined, description, tooltip (may be empty), and whether
    any of its keys is in the footer. Footer keys come first, in the footer's order."""
    groups: dict[tuple[int, str], list[Binding]] = {}
    for active in bindings.values():
        if active.binding.description:
            groups.setdefault((id(active.node), active.binding.action), []).append(active.binding)
    rows = []
    for group in groups.values():
        keys = list(dict.fromkeys(key_display(b) for b in sorted(group, key=lambda b: not b.show)))
        description = next(b.description for b in group if b.show or b is group[-1])
        tooltip = next((b.tooltip for b in sorted(group, key=lambda b: not b.show) if b.tooltip), "")
        rows.append((", ".join(keys), description[:1].upper() + description[1:], tooltip,
                     any(b.show for b in group)))
    return sorted(rows, key=lambda row: not row[3])  # stable: footer keys first
