"""The Results screen: the tables of `fmae report` (the same `fmae.report.build`), one benchmark at a time —
per-AU numbers averaged over folds, mean ± std over seeds with n, partial rows named by the folds and seeds
they hold (c: complete-only), the paper's rows beside them, a pinned baseline group to compare against, the
selected group's completeness grid with one key to queue its missing cells, and export to a file. Every
choice is remembered (fmae_tui/prefs.py, section "results")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Static

from fmae.errors import FmaeError
from fmae.metric_catalogue import REPORT_METRICS
from fmae_tui import prefs
from fmae_tui.baseline_intervals import INTERVAL_LABEL, BaselineIntervals
from fmae_tui.results_text import group_cell, head_text, note_text
from fmae_tui.screens.base import WorkEnded
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.screens.polled import PolledScreen
from fmae_tui.widgets.prompt_bar import PromptBar

if TYPE_CHECKING:
    from fmae.report import GroupRow, Report, Results

# The paper's AU numbers are best-threshold F1: the default is the one number comparable with its rows.
METRIC_CYCLE = ("f1_best", "f1", "auc")
METRIC_NAMES = {name: m.title for name, m in REPORT_METRICS.items()}
THRESHOLD_CYCLE = (None, "test-tuned", "per-au")
DELTA_STYLE = ("red", "green")  # worse, better: colour only repeats the sign
PREFS = "results"
READING = "reading every run's summary… (a large study's first look takes a while)"  # until the first build
NOTE_LINES = 6  # the notes panel's lines (app.tcss: #results-grid max-height 7, one for its border)


class ResultsScreen(PolledScreen):
    SUB_TITLE = "Results"
    POLL_S = 10.0  # runs finish while one looks: rebuild the tables this often
    BINDINGS = [
        Binding("m", "metric", "Metric", tooltip="F1 best-threshold (tuned on test, the paper's) → F1@0.5 → AUC"),
        Binding("e", "epoch", "Epoch", show=False, tooltip="Each run's best epoch (the paper's practice) or its last"),
        Binding("t", "threshold", "Threshold", show=False,
                tooltip="Re-score saved predictions: stored F1 → one test-tuned threshold → per-AU thresholds"),
        Binding("tab", "next_report", "Next table", show=False, tooltip="The next benchmark's table"),
        Binding("shift+tab", "previous_report", "Previous table", show=False, tooltip="The previous table"),
        Binding("c", "complete_only", "Complete only", tooltip="Show only seeds that have every fold, or partial rows "
                "too (named by the folds and seeds they hold)"),
        Binding("k", "group_by", "Group by", show=False, tooltip="Also group rows by config keys, e.g. epochs blr"),
        Binding("w", "widen", "Widen grid", show=False, tooltip="Seeds every grid expects beside those its runs used"),
        Binding("n", "notes", "Notes", show=False, tooltip="Show every note under the table (instead of the grid)"),
        Binding("p", "paper", "Paper", show=False, tooltip="Show or hide the paper's rows"),
        Binding("b", "baseline", "Baseline", show=False, tooltip="Pin the selected group: every Δ is then against it (b again: off)"),
        Binding("a", "add_missing", "Queue missing", tooltip="Queue the selected group's missing (fold, seed) cells"),
        Binding("x", "export", "Export", tooltip="Write the tables to a file: .md, .tex, .csv or .json"),
        Binding("r", "refresh", "Refresh", show=False, tooltip="Read the runs again now")]

    def __init__(self) -> None:
        super().__init__()
        saved = prefs.load(PREFS)
        self.metric = saved.get("metric") if saved.get("metric") in METRIC_CYCLE else METRIC_CYCLE[0]
        self.epoch = "last" if saved.get("epoch") == "last" else "best"
        threshold = saved.get("threshold")
        self.threshold = threshold if threshold in THRESHOLD_CYCLE and self.metric == "f1" else None
        self.by: tuple[str, ...] = tuple(str(k) for k in saved.get("by") or () if isinstance(k, str))
        self.complete_only = bool(saved.get("complete_only", False))
        self.widen: tuple[int, ...] = tuple(int(s) for s in saved.get("widen") or () if isinstance(s, int))
        self.show_paper = bool(saved.get("show_paper", True))
        # each table's pinned group: Report.key -> row label (a label names one row of one table)
        base = saved.get("baselines")
        self.baselines: dict[str, str] = ({str(k): v for k, v in base.items() if isinstance(v, str)}
                                          if isinstance(base, dict) else {})
        self._table_wanted = saved.get("table")  # Report.key of the table last shown
        self.show_notes = False
        self.results: Results | None = None
        self.index = 0  # which report (benchmark, task) is shown
        self.builds = 0  # tables built (tests wait on it)
        self._building = False
        self._again = False
        self._changes_built: tuple | None = ()  # the app's runs_changes as the last build began; (): build
        self._rows: dict[str, Any] = {}  # table row key -> GroupRow or PaperRow
        self._prompt: str | None = None  # what the prompt bar is asking: "by" | "export"
        self.intervals = BaselineIntervals()  # each row's Δ interval against the pinned ★ row
        self._interval_note: str | None = None  # said once per reason
        self._interval_out = False

    @property
    def table(self) -> DataTable:
        return self.query_one("#results-table", DataTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text(READING, "dim"), id="results-bar")
        yield DataTable(id="results-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="results-prompt-row", classes="-hidden"):
            yield Static("", id="results-prompt-label")
            yield PromptBar(id="results-prompt")
        yield Static(id="results-grid")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.table.focus()

    def poll(self) -> None:
        if self.fmae.runs_changes != self._changes_built:  # a rebuild: 8.7 s at 100,000 runs
            self._rebuild()

    def _save_prefs(self) -> None:
        report = self.report
        prefs.save(PREFS, {"metric": self.metric, "epoch": self.epoch, "threshold": self.threshold,
                           "by": list(self.by), "complete_only": self.complete_only, "widen": list(self.widen),
                           "show_paper": self.show_paper, "baselines": self.baselines,
                           "table": report.key if report else self._table_wanted})

    # --- building (a worker: it reads every run) -------------------------------------------------------

    def _rebuild(self) -> None:
        if self._building:
            self._again = True  # settings changed while building: build once more after
            return
        self._building, self._changes_built = True, self.fmae.runs_changes
        self._build(self.metric, self.epoch, self.threshold, self.by, self.complete_only, self.widen)

    class Built(WorkEnded):
        """A build of the tables ended: `result` is the Results."""

    def _build(self, metric: str, epoch: str, threshold: str | None, by: tuple[str, ...], complete_only: bool,
               widen: tuple[int, ...]) -> None:
        from fmae.report import Scoring, Selection, build
        from fmae.run_cache import cached_list_runs  # as `fmae report`: only changed runs read (4.1 -> 0.8 s at 10,000)

        project = self.fmae.project
        self.in_thread(lambda: build(project.runs_dir, Selection(by=by), Scoring(metric, epoch, threshold),
                                     complete_only=complete_only, seeds=widen, project=project,
                                     infos=cached_list_runs(project.runs_dir)), self.Built, group="results-build")

    def on_results_screen_built(self, message: Built) -> None:
        results, error = message.result, message.error
        self._building = False
        if error is not None:
            self._changes_built = ()  # tried again at the next poll
        if error is not None and self.by and error.startswith("--by "):
            # a remembered group-by key no run has (any more): drop it rather than show nothing
            self.notify(f"{error}; grouping by {' '.join(self.by)} dropped (k sets it)", title="results",
                        severity="warning", markup=False, timeout=10)
            self.by = ()
            self._save_prefs()
            self._again = True
        elif error is not None:
            self.notify(error, title="results", severity="error", markup=False, timeout=10)
        else:
            self.results = results
            if self._table_wanted and results is not None:  # the table shown last time, once
                names = [r.key for r in results.reports]
                if self._table_wanted in names:
                    self.index = names.index(self._table_wanted)
                    self._table_wanted = None
        self.builds += 1
        self._show()
        if self._again:
            self._again = False
            self._rebuild()

    # --- showing ---------------------------------------------------------------------------------------

    @property
    def report(self) -> Report | None:
        if not self.results or not self.results.reports:
            return None
        self.index %= len(self.results.reports)
        return self.results.reports[self.index]

    def _baseline_row(self) -> GroupRow | None:
        label = self.baselines.get(self.report.key) if self.report is not None else None
        return next((r for r in self.report.rows if r.label == label), None) if label is not None else None

    def _show(self) -> None:
        from fmae.report.export import default_digits, fmt, mean_std

        table, report = self.table, self.report
        selected = self._selected_key()
        table.clear(columns=True)
        self._rows = {}
        bar = self.query_one("#results-bar", Static)
        if report is None:
            runs = self.fmae.project.runs_dir
            skipped = len(self.results.skipped) if self.results else 0
            bar.update(Text(f"no finished training runs to tabulate in {runs}"
                            + (f" ({skipped} run folder(s) could not be read)" if skipped else "")
                            + " — launch some with l", "dim"))
            self.query_one("#results-grid", Static).update("")
            return
        digits = default_digits(report)
        base = self._baseline_row()
        head = head_text(self.results, self.index, report, base, self.complete_only, self.metric)
        said = self.intervals.head(report.rows, base, self.metric, self.epoch)
        bar.update(head.append(f"\n{said}", "dim") if said else head)

        table.add_column("group", key="group")
        table.add_column("n", key="n")
        columns = ["avg", *[c for c in report.columns if c != "avg"]] if "avg" in report.columns else report.columns
        from fmae.report.export import column_title

        for c in columns:
            table.add_column(column_title(c), key=c)
        for i, row in enumerate(report.rows):
            versus = {c: (row.mean.get(c) - base.mean.get(c)) if base is not None and row is not base
                      and row.mean.get(c) is not None and base.mean.get(c) is not None else None
                      for c in columns} if base is not None else row.delta
            reference = (f"Δ vs ★ {base.group}" if base is not None and row is not base else
                         f"Δ vs paper: {row.delta_vs}" if base is None and row.delta_vs and row.n
                         and not report.paper_note else None)  # no Δ against a number of another metric
            group = group_cell(row, row is base, reference)
            spans = [self.intervals.line(row, base, self.metric, self.epoch, c, digits) for c in columns]
            if any(spans):
                group.append(f"\n{INTERVAL_LABEL}", "dim")
            cells: list[Any] = [group, str(row.n)]
            for c, span in zip(columns, spans):
                cell = Text(mean_std(row, c, digits, "±"))
                d = (versus or {}).get(c) if reference else None
                if d is not None:
                    cell.append("\n" * (len(group.plain.splitlines()) - 1 - bool(any(spans))) + f"{d:+.{digits}f}",
                                DELTA_STYLE[d >= 0])
                if span:
                    cell.append(f"\n{span}", "dim")
                cells.append(cell)
            key = f"row{i}"
            self._rows[key] = row
            table.add_row(*cells, key=key, height=len(group.plain.splitlines()))
        if self.show_paper:
            for i, paper in enumerate(report.paper):
                key = f"paper{i}"
                self._rows[key] = paper
                table.add_row(Text(paper.label, "dim italic"), "", *[Text(fmt(paper.values.get(c), digits), "dim")
                                                                     for c in columns], key=key)
        if selected in self._rows:
            table.move_cursor(row=table.get_row_index(selected))
        self._show_grid()
        self._want_intervals(report, base)

    class IntervalsComputed(WorkEnded):
        """Δ intervals against the pinned row were computed: `result` is {key: MetricDelta or why not}."""

    def _want_intervals(self, report: Report, base: GroupRow | None) -> None:
        jobs = self.intervals.wanted(report.rows, base, self.metric, self.epoch)
        if jobs and not self._interval_out:  # one at a time; the table shown when it ends asks for the rest
            self._interval_out = True
            runs_dir, metric = self.fmae.project.runs_dir, self.metric
            self.in_thread(lambda: self.intervals.compute(runs_dir, jobs, base, metric), self.IntervalsComputed,
                           group="results-intervals")

    def on_results_screen_intervals_computed(self, message: IntervalsComputed) -> None:
        self._interval_out = False
        if message.error is not None:
            self.notify(message.error, title="Δ interval", severity="error", markup=False)
            return
        self.intervals.done.update(message.result)
        note = self.intervals.note(self.report.rows if self.report else [], self._baseline_row(), self.metric)
        if note and note != self._interval_note:
            self.notify(note, title="Δ interval", severity="warning", markup=False, timeout=10)
        self._interval_note = note
        self._show()

    def _selected_key(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        except Exception:
            return None

    @property
    def selected_row(self) -> GroupRow | None:
        from fmae.report import GroupRow

        row = self._rows.get(self._selected_key() or "")
        return row if isinstance(row, GroupRow) else None

    def _grid_of(self, row: GroupRow | None):
        if row is None or self.report is None:
            return None
        return next((g for g in self.report.grids if (g.task, g.dataset, g.fields) == row.group_key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_grid()

    def _show_grid(self) -> None:
        from fmae.report.export import grid_symbol

        box = self.query_one("#results-grid", Static)
        if self.show_notes and self.report is not None:
            import textwrap

            width = max(20, self.size.width - 4)
            lines = [line for note in self.report.notes() for line in textwrap.wrap(f"• {note_text(note)}", width)]
            room = NOTE_LINES
            if len(lines) > room:  # the panel's height: say what is left rather than cut it
                lines = lines[:room - 1] + [f"(+{len(lines) - room + 1} more lines: fmae report prints every note)"]
            box.update(Text("\n".join(lines) if lines else "no notes on this table", "dim"))
            return
        grid = self._grid_of(self.selected_row)
        if grid is None:
            box.update("")
            return
        text = Text(f"{grid.label}: ", "bold")
        text.append(grid.summary())
        for seed in grid.seeds:
            text.append(f"\n seed {seed:<3}")
            for fold in grid.folds:
                state = grid.cells[(fold, seed)]
                where = f"f{fold} " if fold is not None else ""
                text.append(f" {where}{grid_symbol(state).split()[0]}", "bold" if state == "missing" else "")
        if grid.to_add:
            text.append(f"\n a queues the {len(grid.missing())} missing cell(s) · w widens the seeds", "dim")
        box.update(text)

    # --- actions ---------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.focused, PromptBar):  # letters are typing: keep these keys out of the footer
            return action not in {b.action for b in self.BINDINGS}
        return True

    def _changed(self) -> None:
        self._save_prefs()
        self._rebuild()

    def action_metric(self) -> None:
        self.metric = METRIC_CYCLE[(METRIC_CYCLE.index(self.metric) + 1) % len(METRIC_CYCLE)]
        if self.metric != "f1":
            self.threshold = None  # re-scoring applies to F1 at a threshold only
        self._changed()

    def action_epoch(self) -> None:
        self.epoch = "last" if self.epoch == "best" else "best"
        if self.epoch == "last" and self.threshold is not None:
            self.threshold = None
            self.notify("re-scoring needs the best epoch's saved predictions: back to the stored F1@0.5")
        self._changed()

    def action_threshold(self) -> None:
        if self.metric != "f1" or self.epoch != "best":
            now = f"{METRIC_NAMES[self.metric]}, {self.epoch} epoch"
            self.notify(f"re-scoring at another threshold works on F1@0.5 of the best epoch; now: {now} "
                        "(m picks the metric, e the epoch)", severity="warning", markup=False)
            return
        self.threshold = THRESHOLD_CYCLE[(THRESHOLD_CYCLE.index(self.threshold) + 1) % len(THRESHOLD_CYCLE)]
        self._changed()

    def action_complete_only(self) -> None:
        self.complete_only = not self.complete_only
        self._changed()

    def action_next_report(self) -> None:
        self.index += 1
        self._show()
        self._save_prefs()

    def action_previous_report(self) -> None:
        self.index -= 1
        self._show()
        self._save_prefs()

    def action_paper(self) -> None:
        self.show_paper = not self.show_paper
        self._show()
        self._save_prefs()

    def action_notes(self) -> None:
        self.show_notes = not self.show_notes
        self._show_grid()

    def action_refresh(self) -> None:
        self._rebuild()

    def action_baseline(self) -> None:
        row = self.selected_row
        if row is None:
            self.notify("select one of your groups to pin it", severity="warning")
            return
        key = self.report.key
        if self.baselines.pop(key, None) != row.label:  # b on the pinned row unpins it
            self.baselines[key] = row.label
        self._show()
        self._save_prefs()

    def action_add_missing(self) -> None:
        grid = self._grid_of(self.selected_row)
        if grid is None:
            self.notify("select one of your groups", severity="warning")
            return
        if not grid.to_add:
            self.notify(f"{grid.label}: no missing cells" + (f"; failed or cancelled ones: fmae queue retry "
                                                             f"{' '.join(grid.retry)}" if grid.retry else ""))
            return
        cells = [label for m in grid.to_add for label in m.cell_labels()]
        detail = "\n".join([*(f"add {c}" for c in cells), "as:", *(m.command() for m in grid.to_add)])
        self.app.push_screen(ConfirmScreen(f"Queue the {len(cells)} missing cell(s) of {grid.label}?", detail),
                             lambda yes: self._queue_missing(grid) if yes else None)

    class MissingQueued(WorkEnded):
        """Queueing a group's missing cells ended: `result` is what it said, line by line."""

    def _queue_missing(self, grid: Any) -> None:
        self.in_thread(lambda: queue_missing(self.fmae.project, grid), self.MissingQueued, group="results-queue")

    def on_results_screen_missing_queued(self, message: MissingQueued) -> None:
        self.tell(message.error, message.result, "queue", failed="not queued")
        self._rebuild()

    # --- the prompt bar: group-by keys, grid seeds, export path -----------------------------------------

    def _ask(self, what: str, label: str, value: str, placeholder: str) -> None:
        self._prompt = what
        self.query_one("#results-prompt-label", Static).update(label)
        bar = self.query_one("#results-prompt", PromptBar)
        bar.placeholder = placeholder
        bar.value = value
        self.query_one("#results-prompt-row").remove_class("-hidden")
        bar.focus()

    def action_group_by(self) -> None:
        self._ask("by", "group by", " ".join(self.by), "config keys beside dataset, model, recipe, λ: e.g. epochs blr")

    def action_widen(self) -> None:
        self._ask("widen", "grid seeds", ",".join(map(str, self.widen)),
                  "extra seeds for every grid, e.g. 0,1,2 (empty: only the runs' own)")

    def action_export(self) -> None:
        from fmae.report.export import default_export_name, export_path

        report = self.report
        name = default_export_name(report.dataset if report else None)
        self._ask("export", "export to", str(export_path(self.fmae.project.runs_dir, name)),
                  "a path ending .md .tex .csv .json (a relative one goes under the runs folder's exports/)")

    def _close_prompt(self) -> None:
        self._prompt = None
        self.query_one("#results-prompt-row").add_class("-hidden")
        self.table.focus()

    def on_input_submitted(self, event: PromptBar.Submitted) -> None:
        what, value = self._prompt, event.value.strip()
        self._close_prompt()
        if what == "by":
            self.by = tuple(value.replace(",", " ").split())
            self.baselines = {}  # rows are named by the group-by keys: no pinned label names a row now
            self._changed()
        elif what == "widen":
            from fmae.queue_ops import parse_ints

            try:
                self.widen = tuple(parse_ints(value, "grid seeds") or ()) if value else ()
            except FmaeError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self._changed()
        elif what == "export" and value:
            self._export(value)

    def on_prompt_bar_dismissed(self, event: PromptBar.Dismissed) -> None:
        self._close_prompt()

    def _export(self, path_text: str) -> None:
        from fmae.atomic_write import write_text_atomic
        from fmae.report.export import export_path, format_for, render

        if self.results is None:
            self.notify("nothing to export yet", severity="warning")
            return
        # where `fmae report --out` writes the same name: never loose in the app's current folder
        path = export_path(self.fmae.project.runs_dir, path_text)
        try:
            text = render(self.results, format_for(path.name))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
        except (FmaeError, OSError) as e:
            said = f"{path}: {e.strerror or e}" if isinstance(e, OSError) else str(e)
            self.notify(said, title="not exported", severity="error", markup=False, timeout=10)
            return
        self.notify(f"wrote {path}", title="export", markup=False)


def queue_missing(project: Any, grid: Any) -> list[str]:
    """Queue a completeness grid's missing cells (the study layer clones the group's newest run into
    each, deduped as `fmae queue add`); what happened."""
    from fmae.queue_ops import start_scheduler
    from fmae.study import queue_missing as add_missing

    _, jobs = add_missing(project, grid)
    added = len(jobs)
    lines = [f"queued {added} job(s) for {grid.label}"]
    if added:
        lines.append(start_scheduler(project))
    return lines
