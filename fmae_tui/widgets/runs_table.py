"""The table of runs: one row a run, filtered and sorted, updated in place as runs change.

Rows are keyed by run id. The table holds every run's cells (made once when the run changes) and shows
the ones that pass the filter in the chosen order; only the lines on screen are drawn (VirtualTable), so a
filter or a sort moves run ids, never cells. Age and duration move with the clock: they are drawn from
the run as their line is drawn, never stored.
"""

from __future__ import annotations

import functools
import time
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable

from rich.text import Text
from textual.binding import Binding
from textual.message import Message

from fmae.elapsed import duration
from fmae.runs import STATES, RunInfo
from fmae_tui.run_kind import cell_fields, kind_label
from fmae_tui.widgets.run_rows import (SORT_ORDER, SORTS, RunRow, ago, duration_s, matches, parse_filter, progress,
                                       run_rows)
from fmae_tui.widgets.virtual_table import VirtualTable

# Words carry the meaning; colour only repeats it.
STATE_STYLE = {"queued": "", "running": "bold yellow", "done": "green", "failed": "red",
               "cancelled": "dim", "corrupt": "bold red"}
STATE_FILTERS = (None, *STATES, "corrupt")  # what `f` cycles through; None shows every state
RESULT_WIDTH = 17  # "0.612 F1 best-thr"
DEGENERATE = "⚠ degenerate"
MARK = "●"
# Styled cells every row of that state shares (a Text a row would be 10,000 of them).
_STATE_CELLS = {state: Text(state, style, end="") for state, style in STATE_STYLE.items()}
DEGENERATE_CELL = Text(DEGENERATE, "bold red")

# (key, header when narrow, header when wide, shown from this width). At 80 columns the essentials;
# wider terminals add the recipe, duration and speed, then tags and the run id.
COLUMNS = (("mark", "", "", 0), ("state", "state", "state", 0), ("kind", "kind", "kind", 0), ("dataset", "dataset", "dataset", 0),
           ("cell", "cell", "fold seed λ", 0), ("model", "model", "model", 0), ("recipe", "recipe", "recipe", 110),
           ("epoch", "epoch", "epoch", 0), ("result", "result", "result", 0),
           ("duration", "took", "duration", 110), ("rate", "img/s", "images/s", 110), ("age", "age", "age", 0),
           ("tags", "tags", "tags", 140), ("run", "run", "run id", 190))
WIDE = 110  # from this width: full headers and the recipe, duration and images/s

LIVE_WIDTH = {"age": 4, "duration": 7}  # drawn when shown, so sized for the widest: "120d", "123h45m"


def _plain(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def aligned_cell(config: dict[str, Any]) -> str:
    """The cell as wide terminals show it, under the header "fold seed λ": each part starts under its
    word ("f1   s0   λ2"; a run without a fold shows "     s0"), so the column reads as three."""
    slots = {"f": "", "s": "", "λ": ""}
    for part in cell_fields(config).split():
        slots[part[0]] = part
    return (slots["f"].ljust(5) + slots["s"].ljust(5) + slots["λ"]).rstrip()


@functools.lru_cache(maxsize=4096, typed=True)  # typed: fold 1 and 1.0 are shown as they are written
def _study_cell(task: Any, fold: Any, seed: Any, lam: Any, wide: bool) -> str:
    """The cell column's text: a study has few (fold, seed, λ) cells and 10,000 runs repeat them."""
    config = {"task": task, "fold": fold, "seed": seed, "lambda_id": lam}  # all that cell_fields reads
    return _plain(aligned_cell(config) if wide else cell_fields(config))


def study_cell(config: dict[str, Any], wide: bool) -> str:
    key = (config.get("task"), config.get("fold"), config.get("seed"), config.get("lambda_id"), wide)
    try:
        return _study_cell(*key)
    except TypeError:  # a value that cannot be hashed (a hand-edited run.toml): made each time
        return _study_cell.__wrapped__(*key)


def _epoch_cell(info: RunInfo) -> str:
    # An eval run trains no epochs: its config's `epochs` is its source's.
    epoch, epochs = progress(info)
    if info.state == "corrupt" or info.config.get("eval_checkpoint") or epoch is None and epochs is None:
        return "-"
    return f"{epoch or 0}/{epochs or '?'}"


def _result_cell(info: RunInfo, head: tuple[float | None, str, bool]) -> str | Text:
    value, label, degenerate = head
    if info.state == "corrupt":
        problem = info.problem or "unreadable"
        return Text(problem if len(problem) <= RESULT_WIDTH else problem[:RESULT_WIDTH - 1] + "…", "red")
    if degenerate:
        return DEGENERATE_CELL
    return "-" if value is None else f"{value:.3f} {label}"


class RunsTable(VirtualTable):
    """Holds every run it was given; shows those that pass the filter, in the chosen order. The cursor
    belongs to a run id, not a row number: whatever moves rows around, it stays on the same run."""

    BINDINGS = [Binding("enter", "select_cursor", "Open",
                        tooltip="Open the selected run: curves, per-AU F1, log, config, notes"),
                Binding("space", "toggle_mark", "Mark", show=False,
                        tooltip="Mark or unmark the selected run (●), e.g. to compare marked runs")]

    class RunSelected(Message):
        """Enter (or a click) on a run's row."""

        def __init__(self, info: RunInfo) -> None:
            super().__init__()
            self.info = info

    class SortChanged(Message):
        """A click on a column's header chose the sort."""

    class MarksChanged(Message):
        """A run was marked or unmarked (space), or the marks were cleared."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runs: dict[str, RunInfo] = {}
        self.tags: dict[str, list[str]] = {}
        self.rates: dict[str, float] = {}  # run id -> the last images/s its metrics.jsonl measured
        self.state_filter: str | None = None
        self.text_filter = ""
        self.sort_column = "age"
        self.sort_reverse = SORTS["age"][1]
        self.rebuilds = 0  # every run's cells made again: a tick that changes one run must not add one
        self._terms: list[tuple[str | None, str]] = []
        self._columns: tuple[str, ...] = ()
        self._wide = False
        self._now = time.time()
        self._marks: dict[str, None] = {}  # marked run ids, in marking order (kept while filtered out)
        self._hay: dict[str, str] = {}  # run id -> what a plain filter word is looked for in
        self._created: dict[str, float | None] = {}
        self._heads: dict[str, tuple[float | None, str, bool]] = {}  # run id -> headline, its label, degenerate
        self._newest: list[str] | None = None  # every run id, newest first (None: make it again)
        # the ids that pass the filter, newest first (None: make it again), and runs come since that are all
        # older than every run before them (a first look's parts): appended to it, not made again
        self._shown_newest: list[str] | None = None
        self._appended: list[str] = []
        self._seen: dict[str, bool] = {}  # run id -> whether it passes the filter
        self._sort_keys: dict[str, Any] = {}  # run id -> its key for the current sort
        self.live = self._live_cell

    # --- what is shown ------------------------------------------------------------------------------

    def _visible(self, run_id: str) -> bool:
        info = self.runs[run_id]
        if self.state_filter is not None and info.state != self.state_filter:
            return False
        return not self._terms or matches(info, self.tags.get(run_id, []), self._terms, self._hay.get(run_id))

    def _order(self) -> list[str]:
        """The ids shown, in the sort's order. Visibility and sort keys are kept per run and made again
        only for the runs that changed (or all, when the filter or the sort changes), so a look that
        changes one run of 10,000 costs a lookup a run and a sort of an almost sorted list."""
        if self._newest is None:
            self._newest, self._shown_newest = sorted(self.runs, reverse=True), None
        seen = self._seen
        if self._shown_newest is None:
            self._shown_newest, self._appended = list(self._newest), []
            keep = self._shown_newest
        else:
            keep, self._appended = self._appended, []
        visible = [r for r in keep if (seen[r] if r in seen else seen.setdefault(r, self._visible(r)))]
        if keep is self._shown_newest:
            self._shown_newest = visible
        else:
            self._shown_newest += visible
        ids = self._shown_newest
        key, first = SORTS[self.sort_column]
        if self.sort_column == "age":
            return ids[::-1] if self.sort_reverse != first else ids
        keys, now, heads = self._sort_keys, self._now, self._heads
        for r in ids:
            if r not in keys:
                keys[r] = key(self.runs[r], now, self.rates.get(r), heads[r][0])
        # Python's sort is stable, reverse included: equal keys stay newest first.
        return sorted(ids, key=keys.__getitem__, reverse=self.sort_reverse)

    def _forget(self, run_ids: Iterable[str], every: bool = False) -> None:
        """Visibility and sort keys to make again: of these runs, or (`every`) of all."""
        if every:
            self._seen.clear()
            self._sort_keys.clear()
            self._shown_newest = None
            return
        for r in run_ids:
            self._seen.pop(r, None)
            self._sort_keys.pop(r, None)

    def _cells(self, run_id: str) -> tuple[str | Text, ...]:
        return self._cell_rows([run_id])[0]

    def _cell_rows(self, run_ids: list[str]) -> list[tuple[str | Text, ...]]:
        """The stored cells of these runs (every column but the live ones, which `_live_cell` draws); plain
        strings where a cell has no style of its own. Made for every run a look brings (100,000 at a first
        look, on the app's thread): a column at a time, each a comprehension (a dict of cells a row cost
        ~8 µs: 0.8 CPU-s at 100,000 runs), styled cells shared between rows (never changed in place)."""
        runs, wide, heads = self.runs, self._wide, self._heads
        infos = [runs[r] for r in run_ids]
        configs = [i.config for i in infos]
        column: dict[str, Any] = {
            "mark": lambda: [MARK if r in self._marks else " " for r in run_ids],
            "state": lambda: [_STATE_CELLS.get(i.state) or Text(i.state, STATE_STYLE.get(i.state, ""), end="")
                              for i in infos],
            "kind": lambda: [_plain(kind_label(c, wide) if c else None) for c in configs],
            "dataset": lambda: [_plain(c.get("dataset")) for c in configs],
            "cell": lambda: [study_cell(c, wide) for c in configs],
            # At 80 columns "vit_" says nothing the row does not: every model is a ViT.
            "model": lambda: [_plain(m if wide else m.removeprefix("vit_"))
                              for m in (str(c.get("model") or "") for c in configs)],
            "recipe": lambda: [_plain(c.get("recipe")) for c in configs],
            "epoch": lambda: [_epoch_cell(i) for i in infos],
            "result": lambda: [_result_cell(i, heads[i.id]) for i in infos],
            "rate": lambda: ["-" if rate is None else f"{rate:.0f}" for rate in map(self.rates.get, run_ids)],
            "tags": lambda: [_plain(" ".join(self.tags.get(r, ()))[:30]) for r in run_ids],
            "run": lambda: run_ids,
        }
        blank = [""] * len(run_ids)
        return list(zip(*[column[col]() if col in column else blank for col in self._columns]))

    def _live_cell(self, run_id: str, column: str) -> str:
        info = self.runs[run_id]
        if column == "age":
            created = self._created.get(run_id)
            return ago(None if created is None else self._now - created)
        return duration(duration_s(info, self._now))

    # --- building and patching ----------------------------------------------------------------------

    def set_width(self, width: int) -> None:
        """Choose the columns for a terminal this wide; rebuilds only when the choice changes."""
        wide = width >= WIDE
        columns = tuple(key for key, _, _, least in COLUMNS if width >= least)
        if columns == self._columns:
            return
        self._columns, self._wide = columns, wide
        self.clear(columns=True)
        for key, narrow, wide_label, _ in COLUMNS:
            if key in columns:
                # the mark column is one cell and its own padding on the left only
                self.add_column(wide_label if wide else narrow, key=key, width=LIVE_WIDTH.get(key),
                                padding=(1, 0) if key == "mark" else (1, 1))
        self.rebuild()

    def rebuild(self) -> None:
        """Every run's cells again, from scratch: for new columns."""
        self.rebuilds += 1
        ids = list(self.runs)
        self.put_rows(zip(ids, self._cell_rows(ids)))
        self._show()

    def _show(self) -> None:
        """The rows that pass the filter, in the sort's order; the cursor stays on its run."""
        self._now = time.time()
        self.set_order(self._order())

    def apply(self, changed: Iterable[RunRow | tuple], removed: Iterable[str]) -> None:
        """New facts about some runs (`run_rows`, made in a worker; or (info, tags[, images/s]) tuples):
        their rows only."""
        rows = [r if isinstance(r, RunRow) else run_rows([r])[0] for r in changed]
        infos = [row.info for row in rows]
        ids = [info.id for info in infos]
        came = [run_id for run_id in ids if run_id not in self.runs]
        known = len(came) < len(rows)  # a run the table had changed: its visibility is made again
        # a field at a time, in C (100,000 runs at a first look)
        self.runs.update(zip(ids, infos))
        for held, field in ((self.tags, "tags"), (self._hay, "hay"), (self._heads, "head"),
                            (self._created, "created")):
            held.update(zip(ids, map(attrgetter(field), rows)))
        self.rates.update((row.info.id, row.rate) for row in rows if row.rate is not None)
        gone = [run_id for run_id in removed if run_id in self.runs]
        for run_id in gone:
            for held in (self._marks, self.runs, self.tags, self.rates, self._hay, self._created, self._heads):
                held.pop(run_id, None)
        newest = self._newest
        if gone or (came and newest and max(came) > newest[-1]):
            self._newest = None
        elif came and newest is not None:  # all older than every run held: the orders grow at their end
            came.sort(reverse=True)
            newest += came
            self._appended += came
        if known or gone:
            self._shown_newest = None
        self._forget(ids + gone)
        if not self._columns:
            return
        self.drop_rows(gone)
        self.put_rows(zip(ids, self._cell_rows(ids)))
        self._show()

    def set_tags(self, run_id: str, tags: list[str]) -> None:
        if run_id in self.runs:
            self.apply([(self.runs[run_id], tags)], [])

    def refresh_ages(self) -> None:
        """The age and duration columns move with the clock: draw the rows on screen again."""
        self._now = time.time()
        self.refresh_live()

    # --- filter and sort ----------------------------------------------------------------------------

    def set_text_filter(self, text: str) -> None:
        self.text_filter = text
        self._terms = parse_filter(text)
        self._refilter()

    def cycle_state_filter(self) -> str | None:
        i = STATE_FILTERS.index(self.state_filter)
        self.state_filter = STATE_FILTERS[(i + 1) % len(STATE_FILTERS)]
        self._refilter()
        return self.state_filter

    def set_sort(self, column: str, reverse: bool | None = None) -> str:
        """Sort by `column` (a key of SORTS); `reverse` None: that column's natural first direction."""
        if column not in SORTS:
            column = "age"
        self.sort_column = column
        self.sort_reverse = SORTS[column][1] if reverse is None else bool(reverse)
        self._sort_keys.clear()
        if self._columns:
            self._show()
        return self.sort_label

    def cycle_sort(self) -> str:
        i = SORT_ORDER.index(self.sort_column)
        return self.set_sort(SORT_ORDER[(i + 1) % len(SORT_ORDER)])

    def reverse_sort(self) -> str:
        return self.set_sort(self.sort_column, not self.sort_reverse)

    @property
    def sort_label(self) -> str:
        name, first = self.sort_column, SORTS[self.sort_column][1]
        if name == "age":
            return "age (newest first)" if self.sort_reverse == first else "age (oldest first)"
        return f"{name} {'↓' if self.sort_reverse else '↑'}"

    def on_virtual_table_header_selected(self, event: VirtualTable.HeaderSelected) -> None:
        """A click on a header sorts by that column; a second click reverses it."""
        event.stop()
        column = str(event.column_key.value)
        if column not in SORTS:
            return
        if column == self.sort_column:
            self.reverse_sort()
        else:
            self.set_sort(column)
        self.post_message(self.SortChanged())

    def _refilter(self) -> None:
        self._seen.clear()
        self._shown_newest = None
        if self._columns:
            self._show()

    # --- marks -------------------------------------------------------------------------------------

    def action_toggle_mark(self) -> None:
        run_id = self.selected_id
        if run_id is None:
            return
        if run_id in self._marks:
            del self._marks[run_id]
        else:
            self._marks[run_id] = None
        self.put_row(run_id, self._cells(run_id))
        self.post_message(self.MarksChanged())

    def marked_run_dirs(self) -> list[Path]:
        """The marked runs' folders, in the order they were marked."""
        return [self.runs[r].path for r in self._marks if r in self.runs]

    def clear_marks(self) -> None:
        marked, self._marks = [r for r in self._marks if r in self.runs], {}
        self.put_rows(zip(marked, self._cell_rows(marked)))
        self.post_message(self.MarksChanged())

    # --- selection ----------------------------------------------------------------------------------

    @property
    def shown_ids(self) -> list[str]:
        """Run ids in the order they are on screen."""
        return self.row_keys

    @property
    def selected_id(self) -> str | None:
        return self.cursor_key

    @property
    def selected(self) -> RunInfo | None:
        run_id = self.selected_id
        return None if run_id is None else self.runs.get(run_id)

    def on_virtual_table_row_selected(self, event: VirtualTable.RowSelected) -> None:
        event.stop()
        info = self.runs.get(str(event.row_key.value))
        if info is not None:
            self.post_message(self.RunSelected(info))
