"""Pick another run, over the current screen: what the Run screen's config diff is taken against. The
run last compared with this one comes first, then runs of the same dataset, newest first."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from fmae.runs import RunInfo, list_runs
from fmae_tui.screens.base import WorkEnded, in_thread


def candidates(runs_dir: Path, current: Path, first: Path | None) -> list[RunInfo]:
    """Every other readable run: `first`, then the current run's dataset, each newest first."""
    every = list_runs(runs_dir)
    dataset = next((i.config.get("dataset") for i in every if i.path == current), None)
    infos = [i for i in every if i.path != current and i.state != "corrupt"]
    infos.sort(key=lambda i: i.id, reverse=True)
    infos.sort(key=lambda i: (i.path != first, i.config.get("dataset") != dataset))
    return infos


class RunChooser(ModalScreen["Path | None"]):
    """Dismisses with the chosen run's folder (enter), or None (escape)."""

    DEFAULT_CSS = """
    RunChooser { align: center middle; }
    RunChooser #chooser { width: 100%; max-width: 76; height: auto; max-height: 20; border: round $primary;
                          background: $surface; padding: 0 1; }
    RunChooser #chooser-list { height: auto; max-height: 14; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    class Listed(WorkEnded):
        """The other runs were read: `result` is their RunInfos, in the order offered."""

    def __init__(self, current: Path, first: Path | None, title: str) -> None:
        super().__init__()
        self.current, self.first, self.title_text = Path(current), first, title

    def compose(self) -> ComposeResult:
        with Vertical(id="chooser"):
            yield Static(self.title_text, id="chooser-title", markup=False)
            yield OptionList(id="chooser-list")
            yield Static("enter: choose    esc: cancel", id="chooser-keys")

    def on_mount(self) -> None:
        in_thread(self, lambda: candidates(self.current.parent, self.current, self.first), self.Listed,
                  group="chooser")

    def on_run_chooser_listed(self, message: Listed) -> None:
        options = self.query_one(OptionList)
        if message.error is not None or not message.result:
            self.query_one("#chooser-title", Static).update(
                Text(message.error or "no other run in this runs folder", "red"))
            return
        for info in message.result:
            label = Text(info.id)
            label.append(f"  {info.state}", "dim")
            if info.path == self.first:
                label.append("  · compared last", "bold")
            options.add_option(Option(label, id=str(info.path)))
        options.highlighted = 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(Path(event.option.id))

    def action_cancel(self) -> None:
        self.dismiss(None)
