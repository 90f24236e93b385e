"""The table of runs: one row a run, filtered and sorted, updated in place as runs change.

Rows are keyed by run id. An update touches only the cells that changed, adds and removes only the rows
that came or went, and reorders rows (without rebuilding them) only when the order changed.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable, Iterable

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from fmae.runs import STATES, RunInfo
from fmae_tui.widgets.keyed_text import KeyedText

# Words carry the meaning; colour only repeats it.
STATE_STYLE = {"queued": "", "running": "bold yellow", "done": "green", "failed": "red",
               "cancelled": "dim", "corrupt": "bold red"}
STATE_RANK = {s: i for i, s in enumerate(("running", "queued", "failed", "corrupt", "cancelled", "done"))}
STATE_FILTERS = (None, *STATES, "corrupt")  # what `f` cycles through; None shows every state

# What summary.json's `metric` is, in a few characters (metric_label has the long form).
METRIC_SHORT = {"f1_best_mean": "F1 best-thr", "f1_05_mean": "F1@0.5", "accuracy": "acc", "loss": "loss"}
BEST_WIDTH = 17  # "0.612 F1 best-thr"

# (key, header when narrow, header when wide); tags and the run id join when there is room.
COLUMNS = (("state", "state", "state"), ("dataset", "dataset", "dataset"), ("fold", "f", "fold"),
           ("seed", "s", "seed"), ("lambda", "λ", "λ"), ("model", "model", "model"),
           ("epoch", "epoch", "epoch"), ("best", "best", "best"), ("age", "age", "age"))
WIDE = 110  # from this width: full headers and a tags column
WIDEST = 170  # from this width: the run id as well
REBUILD_OVER = 200  # more row additions/removals than this at once: rebuild rather than patch

FIELD_ALIASES = {"state": "state", "dataset": "dataset", "ds": "dataset", "model": "model", "λ": "lambda",
                 "l": "lambda", "lambda": "lambda", "lambda_id": "lambda", "fold": "fold", "seed": "seed",
                 "tag": "tag", "tags": "tag", "task": "task"}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def short_metric(summary: dict[str, Any] | None) -> str:
    metric = str((summary or {}).get("metric") or "")
    return METRIC_SHORT.get(metric, metric)


def best_value(summary: dict[str, Any] | None) -> float | None:
    return _number((summary or {}).get("best_value"))


def parse_time(stamp: Any) -> float | None:
    """Unix seconds from the contract's "2026-11-28T04:12:33.120Z"; None when absent or unreadable."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def progress(info: RunInfo) -> tuple[int | None, int | None]:
    """(epoch, epochs) from status.json, epochs falling back on the config's."""
    epoch, epochs = info.status.get("epoch"), info.status.get("epochs") or info.config.get("epochs")
    return (epoch if isinstance(epoch, int) else None), (epochs if isinstance(epochs, int) else None)


def parse_filter(text: str) -> list[tuple[str | None, str]]:
    """Terms that must all match: `field:value` (state, dataset, model, λ, fold, seed, tag, task) or text."""
    terms: list[tuple[str | None, str]] = []
    for word in text.lower().split():
        field, sep, value = word.partition(":")
        if sep and field in FIELD_ALIASES and value:
            terms.append((FIELD_ALIASES[field], value))
        elif not (sep and not value):  # "state:" while still typing: no term yet
            terms.append((None, word))
    return terms


def matches(info: RunInfo, tags: list[str], terms: list[tuple[str | None, str]]) -> bool:
    c = info.config
    for field, value in terms:
        if field == "state":
            ok = info.state.startswith(value)
        elif field in ("dataset", "model", "task"):
            ok = str(c.get(field, "")).lower() == value
        elif field == "tag":
            ok = value in (t.lower() for t in tags)
        elif field in ("lambda", "fold", "seed"):
            have = _number(c.get("lambda_id" if field == "lambda" else field))
            ok = have is not None and have == _number(value)
        else:
            hay = " ".join([info.id, info.state, *map(str, c.values()), *tags, info.problem or "",
                            str(info.status.get("error", ""))]).lower()
            ok = value in hay
        if not ok:
            return False
    return True


# name, key on (info, tags), whether the first press sorts descending.
SORTS: tuple[tuple[str, Callable[[RunInfo, list[str]], Any], bool], ...] = (
    ("age", lambda i, t: 0, False),  # ties keep newest first: "age" is creation order
    ("best", lambda i, t: (best_value(i.summary) is not None, best_value(i.summary) or 0.0), True),
    ("state", lambda i, t: STATE_RANK.get(i.state, 9), False),
    ("dataset", lambda i, t: str(i.config.get("dataset", "~")), False),
    ("model", lambda i, t: str(i.config.get("model", "~")), False),
    ("λ", lambda i, t: _number(i.config.get("lambda_id")) or -1.0, False),
    ("epoch", lambda i, t: (progress(i)[0] or 0) / max(1, progress(i)[1] or 1), True),
    ("fold", lambda i, t: _number(i.config.get("fold")) or -1.0, False),
    ("seed", lambda i, t: _number(i.config.get("seed")) or -1.0, False),
)


class RunsTable(DataTable):
    """Holds every run it was given; shows those that pass the filter, in the chosen order."""

    BINDINGS = [Binding("enter", "select_cursor", "Open",
                        tooltip="Open the selected run: curves, per-AU F1, log, config, notes")]

    class RunSelected(Message):
        """Enter (or a click) on a run's row."""

        def __init__(self, info: RunInfo) -> None:
            super().__init__()
            self.info = info

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.runs: dict[str, RunInfo] = {}
        self.tags: dict[str, list[str]] = {}
        self.state_filter: str | None = None
        self.text_filter = ""
        self.sort_index = 0
        self.sort_reverse = SORTS[0][2]
        self.rebuilds = 0  # whole-table rebuilds so far: a tick that changes one run must not add one
        self._terms: list[tuple[str | None, str]] = []
        self._columns: tuple[str, ...] = ()
        self._wide = False
        self._shown: dict[str, tuple[str, ...]] = {}  # run id -> plain text of its cells on screen
        self._now = time.time()

    # --- what is shown ------------------------------------------------------------------------------

    def _visible(self, run_id: str) -> bool:
        info = self.runs[run_id]
        if self.state_filter is not None and info.state != self.state_filter:
            return False
        return matches(info, self.tags.get(run_id, []), self._terms)

    def _order(self, ids: Iterable[str]) -> list[str]:
        _, key, _ = SORTS[self.sort_index]
        newest_first = sorted(ids, reverse=True)
        if self.sort_index == 0:
            return newest_first[::-1] if self.sort_reverse != SORTS[0][2] else newest_first
        # Python's sort is stable, reverse included: equal keys stay newest first.
        return sorted(newest_first, key=lambda r: key(self.runs[r], self.tags.get(r, [])), reverse=self.sort_reverse)

    def _cells(self, run_id: str) -> dict[str, Text]:
        info, tags = self.runs[run_id], self.tags.get(run_id, [])
        c = info.config

        def plain(value: Any) -> Text:
            return Text("-" if value is None or value == "" else str(value), end="")

        lam = _number(c.get("lambda_id"))
        epoch, epochs = progress(info)
        if info.state == "corrupt":
            problem = info.problem or "unreadable"
            best = Text(problem if len(problem) <= BEST_WIDTH else problem[:BEST_WIDTH - 1] + "…", "red")
        else:
            value = best_value(info.summary)
            best = plain(None if value is None else f"{value:.3f} {short_metric(info.summary)}")
        created = parse_time(info.status.get("created"))
        cells = {
            "state": KeyedText(info.state, STATE_STYLE.get(info.state, ""), key=run_id),
            "dataset": plain(c.get("dataset")),
            "fold": plain(c.get("fold")),
            "seed": plain(c.get("seed")),
            "lambda": plain(None if lam is None else f"{lam:g}"),
            "model": plain(c.get("model")),
            "epoch": plain(None if info.state == "corrupt" or epoch is None and epochs is None
                           else f"{epoch or 0}/{epochs or '?'}"),
            "best": best,
            "age": plain(ago(None if created is None else self._now - created)),
            "tags": plain(" ".join(tags)[:30] or None),
            "run": plain(run_id),
        }
        return {col: cells[col] for col in self._columns}

    # --- building and patching ----------------------------------------------------------------------

    def set_width(self, width: int) -> None:
        """Choose the columns for a terminal this wide; rebuilds only when the choice changes."""
        wide = width >= WIDE
        columns = tuple(key for key, _, _ in COLUMNS) + (("tags",) if wide else ()) + (("run",) if width >= WIDEST else ())
        if columns == self._columns:
            return
        self._columns, self._wide = columns, wide
        self.clear(columns=True)
        labels = {key: (wide_label if wide else narrow) for key, narrow, wide_label in COLUMNS}
        for col in columns:
            self.add_column(labels.get(col, col), key=col)
        self._shown.clear()
        self.rebuild()

    def rebuild(self) -> None:
        """Every row again, from scratch: for new columns or a filter that changes most rows."""
        selected = self.selected_id
        self.rebuilds += 1
        self.clear()
        self._shown.clear()
        for run_id in self._order(r for r in self.runs if self._visible(r)):
            cells = self._cells(run_id)
            self.add_row(*cells.values(), key=run_id)
            self._shown[run_id] = tuple(cell.plain for cell in cells.values())
        self._restore_cursor(selected)

    def apply(self, changed: Iterable[tuple[RunInfo, list[str]]], removed: Iterable[str]) -> None:
        """New facts about some runs: patch their rows and nothing else."""
        dirty = set()
        for info, tags in changed:
            self.runs[info.id], self.tags[info.id] = info, tags
            dirty.add(info.id)
        for run_id in removed:
            self.runs.pop(run_id, None)
            self.tags.pop(run_id, None)
            dirty.add(run_id)
        self._patch(dirty)

    def set_tags(self, run_id: str, tags: list[str]) -> None:
        if run_id in self.runs:
            self.tags[run_id] = tags
            self._patch({run_id})

    def refresh_ages(self) -> None:
        """The age column moves with the clock: update the cells whose text changed."""
        self._now = time.time()
        self._patch(set(self._shown), reorder=False)

    def _patch(self, dirty: set[str], reorder: bool = True) -> None:
        if not self._columns:
            return
        self._now = time.time()
        want = {r for r in dirty if r in self.runs and self._visible(r)}
        if len(want ^ (dirty & set(self._shown))) > REBUILD_OVER:
            self.rebuild()
            return
        selected = self.selected_id
        moved = False
        for run_id in sorted(dirty):
            if run_id not in want:
                if run_id in self._shown:
                    self.remove_row(run_id)
                    del self._shown[run_id]
                continue
            cells = self._cells(run_id)
            plain = tuple(cell.plain for cell in cells.values())
            old = self._shown.get(run_id)
            if old is None:
                self.add_row(*cells.values(), key=run_id)
                moved = True
            elif old != plain:
                for col, (cell, before) in zip(cells, zip(cells.values(), old)):
                    if cell.plain != before:
                        self.update_cell(run_id, col, cell, update_width=widens(self, col, cell))
                moved = moved or reorder
            self._shown[run_id] = plain
        if moved:
            self._reorder(selected)

    def _reorder(self, selected: str | None) -> None:
        order = self._order(self._shown)
        if order != [str(row.key.value) for row in self.ordered_rows]:
            rank = {run_id: i for i, run_id in enumerate(order)}
            self.sort("state", key=lambda cell: rank[cell.key])
            self._restore_cursor(selected)

    def _restore_cursor(self, run_id: str | None) -> None:
        if run_id is not None and run_id in self._shown:
            self.move_cursor(row=self.get_row_index(run_id), scroll=False)

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

    def cycle_sort(self) -> str:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.sort_reverse = SORTS[self.sort_index][2]
        self._reorder(self.selected_id)
        return self.sort_label

    def reverse_sort(self) -> str:
        self.sort_reverse = not self.sort_reverse
        self._reorder(self.selected_id)
        return self.sort_label

    @property
    def sort_label(self) -> str:
        name, _, first = SORTS[self.sort_index]
        if name == "age":
            return "age (newest first)" if self.sort_reverse == first else "age (oldest first)"
        return f"{name} {'↓' if self.sort_reverse else '↑'}"

    def _refilter(self) -> None:
        self._patch(set(self.runs) | set(self._shown))

    # --- selection ----------------------------------------------------------------------------------

    @property
    def shown_ids(self) -> list[str]:
        """Run ids in the order they are on screen."""
        return [str(row.key.value) for row in self.ordered_rows]

    @property
    def selected_id(self) -> str | None:
        if not self.row_count or not self.is_valid_row_index(self.cursor_row):
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return str(row_key.value)

    @property
    def selected(self) -> RunInfo | None:
        run_id = self.selected_id
        return None if run_id is None else self.runs.get(run_id)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        info = self.runs.get(str(event.row_key.value))
        if info is not None:
            self.post_message(self.RunSelected(info))


def widens(table: DataTable, column: str, cell: Any) -> bool:
    """Whether a new cell is wider than its column: only then ask `update_cell` to re-measure. Asked for a
    narrower cell, Textual measures the whole column again, and 10,000 such updates cost minutes."""
    width = cell.cell_len if isinstance(cell, Text) else Text(str(cell)).cell_len
    return width > table.columns[column].content_width
