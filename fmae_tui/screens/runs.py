"""The Runs screen (home): every run in the runs folder, live. A worker thread looks at the folder every
few seconds and re-reads only the runs that changed; the table patches only their rows."""

from __future__ import annotations

import gc
import re
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.events import Resize
from textual.message import Message
from textual.widgets import Header, Static

from fmae.errors import FmaeError
from fmae.elapsed import duration
from fmae.run_watch import RunScanner
from fmae.runs import RunDir, RunInfo, parse_utc
from fmae.summary import as_summary
from fmae_tui import prefs
from fmae_tui.run_kind import METRIC_LONG, degenerate_text, headline, headline_at, is_degenerate, kind_label
from fmae_tui.screens.base import FmaeScreen, WorkEnded
from fmae_tui.widgets.key_footer import KeyFooter
from fmae_tui.widgets.prompt_bar import PromptBar
from fmae_tui.widgets.run_rows import EXTRAS_TAG
from fmae_tui.widgets.runs_table import RunsTable, ago, duration_s, run_rows


class RunsScreen(FmaeScreen):
    SUB_TITLE = "Runs"
    POLL_S = 2.0  # how often the worker looks at the runs folder
    AGES_S = 10.0  # how often the age column is brought up to date
    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/",
                tooltip="Filter by text; state:, dataset:, model:, λ:, fold:, seed:, tag: match one field"),
        Binding("s", "sort", "Sort", tooltip="Sort by the next column: age, state, kind, dataset, cell, model, "
                "recipe, epoch, result, duration, images/s (or click a header); remembered"),
        Binding("S", "reverse_sort", "Reverse sort", show=False, tooltip="Reverse the order of the sort"),
        Binding("f", "state_filter", "State", show=False,
                tooltip="Show one state only: queued, running, done, … (cycles)"),
        Binding("t", "tags", "Tags", show=False, tooltip="Edit the selected run's tags (space-separated)"),
        Binding("r", "refresh", "Refresh", show=False, tooltip="Read every run folder again now"),
        Binding("c", "compare", "Compare", show=False, tooltip="Compare the marked runs (space marks; or one marked run and "
                "the cursor's): curves overlaid, per-AU tables side by side, config diff"),
        Binding("D", "config_diff", "Config diff", show=False, tooltip="The config keys in which the marked runs "
                "differ (or one marked run and the cursor's), each value with its source"),
        # Home's footer shows the ways out (the app's own bindings for these keys stay out of footers).
        Binding("l", "app.open('launch')", "Launch", tooltip="Queue a matrix of runs: folds × seeds × λ"),
        Binding("j", "app.open('queue')", "Queue", tooltip="The queue's jobs: cancel, retry, reprioritise"),
        Binding("R", "app.open('results')", "Results",
                tooltip="Per-AU tables over folds and seeds, the paper beside them"),
        Binding("escape", "clear_filters", "Clear filters", show=False,
                tooltip="Show every run again (text and state filters off); the bar says when one is on"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.scans = 0  # scans applied so far (tests wait on it)
        self._scanner: RunScanner | None = None
        self._scanning = False  # a scan worker is out: the next tick waits for it
        self._full = False
        self._tags_for: str | None = None
        self._error: str | None = None
        self._gc_paused = False  # the cyclic collector is off for the first look (see _keep_out_of_gc)

    @property
    def looking(self) -> bool:
        """A look at the runs folder (or the index a first look left to write) is out."""
        return self._scanning

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="runs-bar")
        with Horizontal(id="filter-row", classes="-hidden"):
            yield Static("/", id="filter-label")
            yield PromptBar(placeholder="text, or state:running dataset:bp4d model:vit_base λ:2 tag:x",
                            id="filter")
        yield RunsTable(id="runs")
        yield PromptBar(placeholder="tags, separated by spaces", id="tags", classes="-hidden")
        yield Static(id="run-info")
        yield KeyFooter(show_command_palette=False)  # ^p still works (help lists it); 80 columns need the room

    def on_mount(self) -> None:
        self._scanner = RunScanner(self.fmae.project.runs_dir, slim=True, extras_tag=EXTRAS_TAG)
        saved = prefs.load("runs")
        self.table.set_sort(str(saved.get("sort", "age")), saved.get("reverse") if isinstance(saved.get("reverse"), bool) else None)
        self.table.set_width(self.app.size.width)
        self.table.focus()
        self._show_bar()
        self._show_selected()
        # Looking happens only while this screen is on top (see on_screen_resume / on_screen_suspend).
        self._poll_timer = self.set_interval(self.POLL_S, self._tick, pause=True)
        self._ages_timer = self.set_interval(self.AGES_S, self._tick_ages, pause=True)

    def on_screen_resume(self) -> None:
        if self.scans:
            self._tick()
        else:
            # The first look (0.5 CPU-s at 10,000 runs) holds the GIL in bursts: started now, it would
            # delay the first paint by as much. Once the empty screen is drawn, it may compete.
            self.call_after_refresh(self._tick)
        self._poll_timer.resume()
        self._ages_timer.resume()

    def on_screen_suspend(self) -> None:
        self._poll_timer.pause()
        self._ages_timer.pause()

    def on_resize(self, event: Resize) -> None:
        self.table.set_width(event.size.width)

    # --- the worker -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self._scanning and self._scanner is not None:
            self._scanning = True
            full, self._full = self._full, False
            if self.scans == 0 and gc.isenabled():
                gc.disable()
                self._gc_paused = True
            self._scan(self._scanner, full)

    class Scanned(WorkEnded):
        """A look at the runs folder ended: `result` is (changed runs, ids gone); `context` says if it was full."""

    class ScannedPart(Message):
        """Part of a first (or full) look: `rows` (RunRows) read so far; the table fills as they come."""

        def __init__(self, rows: list) -> None:
            super().__init__()
            self.rows = rows

    def _scan(self, scanner: RunScanner, full: bool) -> None:
        # Rows are made in the worker (summaries parsed and slimmed there); a first look at 10,000 runs
        # arrives in parts, newest first, so the top of the table shows while the rest are read. Only a
        # first look keeps the rows' extras, for the index it writes (a later one's would stay for good).
        extras = scanner.extras if self.scans == 0 and not full else None

        def part(changed: list) -> None:
            self.post_message(self.ScannedPart(run_rows(changed, extras)))

        def look() -> tuple[list, list[str]]:
            changed, removed = scanner.scan(full=full, part=part, save=False)  # the index: once shown
            return run_rows(changed, extras), removed

        # an unreadable runs folder (FmaeError, OSError) is said as it is, and the looking goes on
        self.in_thread(look, self.Scanned, group="runs-scan", context=full, plain=(FmaeError, OSError))

    def on_runs_screen_scanned_part(self, message: ScannedPart) -> None:
        self.table.apply(message.rows, [])
        if self._gc_paused:  # the first look's rows; a full look's (r) leave the collector its garbage
            _keep_out_of_gc()
        self._show_bar()
        self._show_selected()

    class IndexSaved(WorkEnded):
        """The runs folder's index a first look left to write is written (or could not be: only the next
        process's first look is slower)."""

    def on_runs_screen_index_saved(self, message: IndexSaved) -> None:
        self._scanning = False

    def on_runs_screen_scanned(self, message: Scanned) -> None:
        changed, removed = message.result or ([], [])
        error, full = message.error, message.context
        scanner = self._scanner
        if scanner is not None and scanner.index_due:  # after this look is shown; the next look waits for it
            self.in_thread(scanner.save_index, self.IndexSaved, group="runs-index")
        else:
            self._scanning = False
        if self._gc_paused:
            self._gc_paused = False
            _keep_out_of_gc()
            gc.enable()
        if error != self._error and error is not None:  # once per new problem, not every few seconds
            self.notify(error, title="runs folder", severity="error", markup=False, timeout=10)
        self._error = error
        if changed or removed or self.scans == 0:
            self.table.apply(changed, removed)
            self._show_bar()
            self._show_selected()
        if full and error is None:
            n = len(self.table.runs)
            self.notify(f"read {n} {'run' if n == 1 else 'runs'} again", markup=False)
        self.scans += 1

    def _tick_ages(self) -> None:
        self.table.refresh_ages()
        self._show_selected()  # its "queued … ago" / "heartbeat … ago" age as the column's do

    # --- text around the table ------------------------------------------------------------------------

    def _show_bar(self) -> None:
        table = self.table
        total, shown = len(table.runs), table.row_count
        if not total:
            where = self.fmae.project.runs_dir
            text = Text(f"no runs yet in {where}" + ("" if where.is_dir() else " (not created yet)"))
        else:
            noun = "run" if total == 1 else "runs"
            text = Text(f"{shown} of {total} {noun}" if shown != total else f"{total} {noun}")
            if table.state_filter:
                text.append(" · state ").append(table.state_filter, "bold")
            if table.text_filter.strip():
                text.append(" · filter ").append(table.text_filter.strip(), "bold")
            text.append(f" · sort {table.sort_label}")
            marked = len(table.marked_run_dirs())
            if marked:
                text.append(f" · {marked} marked", "bold")
                text.append(" · c: compare", "dim")
            if table.state_filter or table.text_filter.strip():
                text.append(" · esc: clear filters", "dim")
        self.query_one("#runs-bar", Static).update(text)
        self.refresh_bindings()  # "esc Clear filters" comes and goes with the filters

    def _show_selected(self) -> None:
        info = self.table.selected
        box = self.query_one("#run-info", Static)
        if info is None:
            box.update("")
            return
        text = Text(info.id, "bold")
        tags = self.table.tags.get(info.id, [])
        if tags:
            text.append(" · tags " + " ".join(tags))
        text.append("\n")
        text.append_text(_state_line(info))
        box.update(text)

    def on_virtual_table_row_highlighted(self, event: RunsTable.RowHighlighted) -> None:
        self._show_selected()

    def on_runs_table_run_selected(self, event: RunsTable.RunSelected) -> None:
        from fmae_tui.screens.run import RunScreen  # plotting code loads when first needed

        self.app.push_screen(RunScreen(event.info.path))

    # --- actions --------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While a bar takes typing, these keys are text: keep them out of the footer.
        if action in ("filter", "sort", "reverse_sort", "state_filter", "tags", "refresh", "compare", "config_diff"):
            return not isinstance(self.focused, PromptBar)
        if action == "clear_filters":
            return bool(self.table.state_filter or self.table.text_filter.strip())
        return True

    def action_clear_filters(self) -> None:
        self.table.state_filter = None
        self._close_filter(keep=False)
        self._show_selected()

    def action_filter(self) -> None:
        self.query_one("#filter-row").remove_class("-hidden")
        self.query_one("#filter", PromptBar).focus()

    def action_sort(self) -> None:
        self.table.cycle_sort()
        self._sorted()

    def action_reverse_sort(self) -> None:
        self.table.reverse_sort()
        self._sorted()

    def on_runs_table_sort_changed(self, event: RunsTable.SortChanged) -> None:
        self._sorted()

    def on_runs_table_marks_changed(self, event: RunsTable.MarksChanged) -> None:
        self._show_bar()

    def _sorted(self) -> None:
        prefs.save("runs", {"sort": self.table.sort_column, "reverse": self.table.sort_reverse})
        self._show_bar()

    def action_state_filter(self) -> None:
        self.table.cycle_state_filter()
        self._show_bar()
        self._show_selected()

    def _compared(self) -> list | None:
        """The runs to compare: the marked ones, or one marked and the cursor's; None (said) otherwise."""
        paths = self.table.marked_run_dirs()
        info = self.table.selected
        if len(paths) == 1 and info is not None and info.path not in paths:
            paths.append(info.path)
        if len(paths) < 2:
            self.notify("mark two or more runs with space (or one, and put the cursor on another)",
                        severity="warning")
            return None
        return paths

    def action_compare(self, tab: str = "curves") -> None:
        from fmae_tui.screens.compare import CompareScreen  # plotting code loads when first needed

        paths = self._compared()
        if paths is not None:
            self.app.push_screen(CompareScreen(paths, tab=tab))

    def action_config_diff(self) -> None:
        self.action_compare("config")

    def action_refresh(self) -> None:
        self._full = True
        if not self._scanning:
            self._tick()

    def action_tags(self) -> None:
        info = self.table.selected
        if info is None:
            self.notify("no run selected", severity="warning")
            return
        self._tags_for = info.id
        bar = self.query_one("#tags", PromptBar)
        bar.border_title = f"tags of {info.id}"
        bar.value = " ".join(self.table.tags.get(info.id, []))
        bar.remove_class("-hidden")
        self.query_one("#run-info").add_class("-hidden")
        bar.focus()

    def on_input_changed(self, event: PromptBar.Changed) -> None:
        # Not a value typed over since (keys typed faster than 100,000 runs filter: its own Changed follows),
        # nor the filter already applied (escape clears it, then its Changed comes).
        value = event.value
        if event.input.id == "filter" and value == event.input.value and value != self.table.text_filter:
            self.table.set_text_filter(value)
            self._show_bar()
            self._show_selected()

    def on_input_submitted(self, event: PromptBar.Submitted) -> None:
        if event.input.id == "filter":
            self._close_filter(keep=True)
        elif event.input.id == "tags":
            self._save_tags(event.value)

    def on_prompt_bar_dismissed(self, event: PromptBar.Dismissed) -> None:
        if event.bar.id == "filter":
            self._close_filter(keep=False)
        else:
            self._close_tags()

    def _close_filter(self, keep: bool) -> None:
        bar = self.query_one("#filter", PromptBar)
        if not keep:
            bar.value = ""  # Changed follows: the table shows every run again
            self.table.set_text_filter("")
        self.query_one("#filter-row").set_class(not bar.value.strip(), "-hidden")
        self.table.focus()
        self._show_bar()

    def _save_tags(self, value: str) -> None:
        info = self.table.runs.get(self._tags_for or "")
        if info is None:
            self._close_tags()
            return
        tags = [t for t in re.split(r"[\s,]+", value) if t]
        run = RunDir(info.path)
        try:
            run.write_tags(tags)
            saved = run.read_tags()
        except FmaeError as e:
            self.notify(str(e), title="tags not saved", severity="error", markup=False)
            return
        except OSError as e:
            self.notify(f"{run.tags_path}: {e.strerror or e}", title="tags not saved", severity="error",
                        markup=False)
            return
        self.table.set_tags(info.id, saved)
        self.notify(f"{info.id}: tags {' '.join(saved) or '(none)'}", markup=False)
        self._close_tags()

    def _close_tags(self) -> None:
        self._tags_for = None
        self.query_one("#tags").add_class("-hidden")
        self.query_one("#run-info").remove_class("-hidden")
        self.table.focus()
        self._show_selected()


def _keep_out_of_gc() -> None:
    """The rows a first look brings stay as long as the app (a run's row is replaced whole, freed by its
    count): moved out of the cyclic collector's generations, which otherwise walk them again and again as
    they come (0.2-0.4 CPU-s of a 10,000-run first look, 1.1 of a 100,000-run one, even at FmaeApp's
    threshold). So the collector is off while the first look reads, and what exists is frozen after each
    part (`gc.freeze` splices lists: O(1)); the few cyclic leftovers of drawing frozen with them (~12,000
    objects at 10,000 runs) stay until the app ends and thaws everything (FmaeApp.on_unmount)."""
    gc.freeze()


def _state_line(info: RunInfo) -> Text:
    """What the run is and what its state means right now, in one or two lines."""
    s, now, c = info.status, time.time(), info.config
    if info.state == "corrupt":
        return Text(f"corrupt: {info.problem}", "red")
    what = [kind_label(c, wide=True)] if c else []
    if c.get("eval_checkpoint") and c.get("source_run"):
        what.append(f"of {c['source_run']}")
    if info.state in ("failed", "cancelled"):
        why = s.get("error") or "no reason given"
        code = f" (exit {s['exit_code']})" if "exit_code" in s else ""
        return Text(" · ".join(what + [f"{info.state}{code}: {why}"]), "red" if info.state == "failed" else "")
    parts = what
    if info.state == "running":
        step, total = s.get("step"), s.get("total_steps")
        if isinstance(step, int) and isinstance(total, int) and total:
            parts.append(f"step {step}/{total} ({100 * step // total}%)")
        beat = parse_utc(s.get("heartbeat"))
        if beat is not None:
            parts.append(f"heartbeat {ago(now - beat)} ago")
        if s.get("host"):
            gpus = s.get("gpus")
            parts.append(f"on {s['host']}" + (f" gpus {','.join(map(str, gpus))}" if gpus else " cpu"))
    elif info.state == "queued":
        created = parse_utc(s.get("created"))
        parts.append(f"queued {ago(None if created is None else now - created)} ago")
    summary = as_summary(info.summary)
    value, _ = headline(summary)
    if value is not None:
        label = METRIC_LONG.get(str(summary.metric), str(summary.metric))
        _, epoch = headline_at(summary)
        which = "epoch" if summary.best_value is None else "best epoch"  # pretraining: its last
        parts.append(f"{label} {value:.3f} ({which} {epoch})")
    if info.state == "done":
        ended = parse_utc(s.get("ended"))
        if ended is not None:
            parts.append(f"took {duration(duration_s(info, now))}, ended {ago(now - ended)} ago")
    text = Text(" · ".join(parts) or info.state)
    if is_degenerate(summary):
        text.append("\n" + degenerate_text(summary), "bold red")
    return text
