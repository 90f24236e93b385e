"""The Compare screen: several runs at once — their train loss and test score curves overlaid (one colour
and mark a run, named in one legend above the plots, so no legend covers a line), their best epochs'
per-AU tables side by side, and the config keys in which they differ, each value with its source.

The loss plotted for an AU run is its AU loss alone (`loss_au` in metrics.jsonl): with λ > 0 the trainer's
`loss` adds the identity-adversarial term, so λ 0's and λ 2's `loss` are not the same quantity. The
plot's title says which loss it is and a line under the legend says why (a title wider than the plot is
dropped by plotext, so the title stays short); a run that logged only the total is named there.

Live, as the Run screen: a worker looks at every run's folder once a second through a `RunPoller` each
(only what is new is read) and posts one message; the handler patches the plots and tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from fmae.errors import FmaeError
from fmae.metric_catalogue import ACCURACY, AUC, F1_05, F1_BEST
from fmae.run_diff import NO_SOURCE, diff, flat, show, sides_of
from fmae.run_watch import RunPoller
from fmae_tui.run_kind import au_loss
from fmae_tui.screens.base import WorkEnded
from fmae_tui.screens.polled import PolledScreen
from fmae_tui.widgets.compare_table import CompareTable
from fmae_tui.widgets.curve_plot import CurvePlot, series_style

SCORES = (F1_05, F1_BEST, AUC, ACCURACY)  # what `m` cycles through, where a run has it
# The fields a short name is made of, where they tell the runs apart: (config key, how it is written)
NAME_FIELDS = (("dataset", "{}"), ("model", "{}"), ("recipe", "{}"), ("lambda_id", "λ{}"), ("fold", "f{}"),
               ("seed", "s{}"), ("epochs", "{} ep"))
TABS = {"curves": "1 Curves", "scores": "2 Per-AU", "config": "3 Config"}


def short_names(configs: list[dict[str, Any]], ids: list[str]) -> list[str]:
    """Each run by what tells it from the others ("λ2 s0"): the naming fields that differ, else the first
    two other config keys that do, else the end of its run id; a name two runs share gets its id's end."""
    flats = [flat(c) for c in configs]
    differ = [(k, form) for k, form in NAME_FIELDS if len({show(f.get(k)) for f in flats}) > 1]
    if not differ:
        keys = sorted({k for f in flats for k in f})
        differ = [(k, f"{k}={{}}") for k in keys if len({show(f.get(k)) for f in flats}) > 1][:2]
    names = [" ".join(form.format(show(f.get(k, "-"))) for k, form in differ) for f in flats]
    return [name if name and names.count(name) == 1 else " ".join(filter(None, [name, run_id.rsplit("-", 1)[-1]]))
            for name, run_id in zip(names, ids)]


def loss_label(letters: list[str], tracks: list["Track"]) -> tuple[str, str]:
    """The loss plot's title and the note under the legend: what its curves are, so that no λ > 0
    total is read as an AU loss ("" for no note: no run has an identity term)."""
    total_with_id = [letter for letter, t in zip(letters, tracks) if t.loss_key == "loss" and t.identity_term]
    if total_with_id:  # a run that logged no AU loss of its own: its curve holds the identity term
        return "train loss", (f"train loss of {', '.join(total_with_id)}: AU + λ's identity term (no AU loss "
                              "logged alone), not comparable with the others'")
    if any(t.identity_term for t in tracks):
        return "train AU loss", "train AU loss: the AU BCE alone, λ's identity-adversarial term left out"
    return "train loss", ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Track:
    """What the screen keeps of one run."""

    path: Path
    poller: RunPoller
    config: dict[str, Any] = field(default_factory=dict)
    state: str = "…"
    best: dict[str, Any] | None = None  # summary.json's best test record
    loss: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    loss_key: str | None = None  # what `loss` holds: "loss_au" (the AU BCE alone) or "loss" (the total)
    identity_term: bool = False  # its records hold an identity loss (λ > 0)
    scores: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # metric key -> (epochs, values)

    def add(self, records: list[dict[str, Any]], reset: bool) -> None:
        if reset:
            self.loss = ([], [])
            self.scores = {}
            self.loss_key, self.identity_term = None, False
        for rec in records:
            split, epoch = rec.get("split"), _number(rec.get("epoch"))
            if split == "train":
                key, loss = au_loss(rec)
                x, loss = _number(rec.get("epoch_frac")), _number(loss)
                x = x if x is not None else epoch
                if x is not None and loss is not None:
                    self.loss[0].append(x)
                    self.loss[1].append(loss)
                    self.loss_key = key
                    self.identity_term = self.identity_term or "loss_id" in rec
            elif split == "test" and epoch is not None:
                for m in SCORES:
                    value = _number(rec.get(m.key))
                    if value is not None:
                        xs, ys = self.scores.setdefault(m.key, ([], []))
                        xs.append(epoch)
                        ys.append(value)


class CompareScreen(PolledScreen):
    SUB_TITLE = "Compare"
    POLL_S = 1.0
    DEFAULT_CSS = """
    CompareScreen #compare-legend { height: auto; max-height: 4; padding: 0 1; }
    CompareScreen #compare-tabs, CompareScreen #compare-tabs > ContentSwitcher { height: 1fr; }
    CompareScreen #compare-tabs TabPane { height: 1fr; padding: 0; }
    CompareScreen #curves Horizontal { height: 1fr; }
    CompareScreen #cmp-loss, CompareScreen #cmp-score { width: 1fr; }
    CompareScreen #cmp-caption { height: auto; padding: 0 1; }
    CompareScreen #cmp-table, CompareScreen #cmp-config-scroll { height: 1fr; }
    CompareScreen #cmp-config { padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "app.back", "Back", tooltip="Back to the screen before"),
        Binding("m", "next_score", "Score", tooltip="The test score plotted: F1@0.5, F1 best-thr (tuned on "
                "test), AUC or accuracy (cycles)"),
        Binding("D", "show_tab('config')", "Config diff", tooltip="The config keys in which the runs differ, "
                "each value with its source"),
        *(Binding(title[0], f"show_tab('{tab}')", f"{title[2:]} tab", show=False,
                  tooltip={"curves": "Train loss and the test score of every run, overlaid",
                           "scores": "The best epoch's per-AU scores of every run, side by side",
                           "config": "The config keys in which the runs differ"}[tab])
          for tab, title in TABS.items()),
    ]

    def __init__(self, paths: list[Path], tab: str = "curves") -> None:
        super().__init__()
        self.tracks = [Track(Path(p), RunPoller(Path(p))) for p in paths]
        self.first_tab = tab
        self.score = F1_05
        self._score_chosen = False  # m pressed: keep the user's choice (else the first score the runs have)
        self.names: list[str] = [t.path.name for t in self.tracks]
        self.polls = 0  # looks applied (tests wait on it)
        self._polling = False
        self._diffed = False

    @property
    def letters(self) -> list[str]:
        return [chr(ord("A") + i) for i in range(len(self.tracks))]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="compare-legend")
        with TabbedContent(id="compare-tabs", initial=self.first_tab):
            with TabPane(TABS["curves"], id="curves"):
                with Horizontal():
                    yield CurvePlot("train loss", id="cmp-loss", own_legend=False)
                    yield CurvePlot(f"test {self.score.long}", id="cmp-score", own_legend=False)
            with TabPane(TABS["scores"], id="scores"):
                yield Static(id="cmp-caption")
                yield CompareTable(id="cmp-table")
            with TabPane(TABS["config"], id="config"):
                with VerticalScroll(id="cmp-config-scroll"):
                    yield Static("reading run.toml…", id="cmp-config")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        # (PolledScreen's own on_mount, which Textual calls as well, starts the looking)
        self.sub_title = f"Compare {len(self.tracks)} runs"
        paths = [t.path for t in self.tracks]
        for i, path in enumerate(paths):  # the Run screen's config diff offers this partner first
            self.fmae.compared[path] = paths[i - 1] if i else paths[1]
        self._show_legend()

    # --- the worker -----------------------------------------------------------------------------------

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.in_thread(self._look, self.Polled, group="compare-poll", plain=())

    class Polled(WorkEnded):
        """A look at every run's folder ended: `result` is (the RunUpdates, the config diff or None)."""

    def _look(self) -> tuple[list[Any], Any]:
        updates = [t.poller.poll() for t in self.tracks]
        config_diff = None
        if not self._diffed:
            try:
                named = [(t.path.name, [t.path]) for t in self.tracks]
                sides = sides_of(named)
                config_diff = (sides, diff(sides))
            except FmaeError as e:
                config_diff = str(e)
        return updates, config_diff

    def on_compare_screen_polled(self, message: Polled) -> None:
        self._polling = False
        if message.error is not None:
            self.notify(message.error, title="reading the runs", severity="error", markup=False)
            return
        updates, config_diff = message.result
        curves = table = legend = False
        for track, update in zip(self.tracks, updates):
            for name, problem in update.errors.items():
                self.notify(f"{track.path.name}: {problem}", title=f"{name} unreadable", severity="warning",
                            markup=False)
            if "run.toml" in update.files and update.files["run.toml"]:
                track.config = update.files["run.toml"][0]
                legend = True
            if "status.json" in update.files:
                track.state = (update.files["status.json"] or {}).get("state") or "corrupt"
                legend = True
            if "summary.json" in update.files:
                track.best = (update.files["summary.json"] or {}).get("best")
                table = True
            if update.records or update.metrics_reset:
                track.add(update.records, update.metrics_reset)
                curves = True
        if legend:
            self.names = short_names([t.config for t in self.tracks], [t.path.name for t in self.tracks])
            self._show_legend()
        if curves and not legend:  # the note under the legend follows what the loss curves hold
            self._show_legend()
        if curves or legend:
            self._replot()
        if table or legend:
            self._show_table()
        if config_diff is not None:
            self._diffed = True
            self._show_config(config_diff)
        self.polls += 1

    # --- what is shown --------------------------------------------------------------------------------

    def _show_legend(self) -> None:
        text = Text()
        for i, (letter, name, track) in enumerate(zip(self.letters, self.names, self.tracks)):
            mark, colour = series_style(i)
            if i:
                text.append("   ")
            text.append(f"{mark} {letter} {name}", style=f"bold {colour}")
            if track.state != "done":
                text.append(f" ({track.state})", style="dim")
        note = loss_label(self.letters, self.tracks)[1]
        if note:
            text.append(f"\n{note}", style="dim")
        self.query_one("#compare-legend", Static).update(text)

    def _replot(self) -> None:
        loss = self.query_one("#cmp-loss", CurvePlot)
        score = self.query_one("#cmp-score", CurvePlot)
        loss.clear_series()
        score.clear_series()
        held = [m for m in SCORES if any(m.key in t.scores for t in self.tracks)]
        if not self._score_chosen and held and self.score not in held:
            self.score = held[0]  # FER runs: accuracy, not an empty F1 plot
        for i, (letter, track) in enumerate(zip(self.letters, self.tracks)):
            loss.set_series(letter, *track.loss, slot=i)
            score.set_series(letter, *track.scores.get(self.score.key, ([], [])), slot=i)
        score.title = f"test {self.score.long}"
        loss.title = loss_label(self.letters, self.tracks)[0]
        loss.replot()
        score.replot()

    def _show_table(self) -> None:
        runs = [(letter, series_style(i)[1], t.best) for i, (letter, t) in enumerate(zip(self.letters, self.tracks))]
        self.query_one(CompareTable).show(runs, au=any(t.config.get("task") == "au" for t in self.tracks))
        caption = Text("each run's best epoch (summary.json) · bold: the best of the runs")
        if any(isinstance((t.best or {}).get("f1_best"), dict) for t in self.tracks):
            caption.append(f"\n{F1_BEST.long}: each run's threshold chosen on its own test fold, as the paper",
                           "dim")
        missing = [letter for letter, t in zip(self.letters, self.tracks) if not t.best]
        if missing:
            caption.append(f"\nno evaluation yet: {', '.join(missing)}", "dim")
        self.query_one("#cmp-caption", Static).update(caption)

    def _show_config(self, config_diff: Any) -> None:
        body = self.query_one("#cmp-config", Static)
        if isinstance(config_diff, str):
            body.update(Text(config_diff, "red"))
            return
        sides, rows = config_diff
        if not rows:
            body.update(Text(f"no differences: the {len(sides)} configs are the same key for key"))
            return
        grid = Table(box=None, padding=(0, 1), header_style="bold", expand=True,
                     title=f"{len(rows)} key(s) differ — value, and (dim) the source run.toml recorded",
                     title_justify="left")
        grid.add_column("key", style="bold", no_wrap=True)
        for i, letter in enumerate(self.letters):
            grid.add_column(Text(letter, f"bold {series_style(i)[1]}"), overflow="fold", ratio=1)
        for row in rows:
            cells = []
            for values in row.cells:
                cell = Text()
                for j, v in enumerate(values):
                    cell.append(("\n" if j else "") + v.text)
                    cell.append(f"\n{v.source or NO_SOURCE}", "dim")
                cells.append(cell)
            grid.add_row(row.key, *cells)
        body.update(grid)

    # --- actions --------------------------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        target = {"scores": "#cmp-table", "config": "#cmp-config-scroll"}.get(tab)
        if target is not None:  # arrows and page keys then move what the tab shows
            self.query_one(target).focus()

    def action_next_score(self) -> None:
        held = [m for m in SCORES if any(m.key in t.scores for t in self.tracks)] or [self.score]
        self.score = held[(held.index(self.score) + 1) % len(held)] if self.score in held else held[0]
        self._score_chosen = True
        self.query_one(TabbedContent).active = "curves"
        self._replot()
        self.notify(f"plotting test {self.score.long}", markup=False)

