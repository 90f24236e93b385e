"""The Queue screen: queued and running jobs (and the latest finished ones) with their slot and progress,
live; cancel, retry and reprioritise through `fmae.queue_ops`, the code path of `fmae queue …`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from fmae.errors import FmaeError
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.screens.polled import PolledScreen
from fmae_tui.widgets.runs_table import widens

if TYPE_CHECKING:
    from fmae_tui.app import FmaeApp

STATE_STYLE = {"running": "bold green", "queued": "cyan", "done": "", "failed": "bold red", "cancelled": "yellow",
               "corrupt": "bold red", "cancelling": "yellow"}


class QueueScreen(PolledScreen):
    SUB_TITLE = "Queue"
    POLL_S = 1.0
    BINDINGS = [
        Binding("c", "cancel", "Cancel job", tooltip="Cancel the selected job (asks first): a running one gets SIGTERM"),
        Binding("r", "retry", "Retry", tooltip="Queue a failed or cancelled job again (asks first); it resumes"),
        Binding("plus,equals_sign", "priority(1)", "Priority +", key_display="+",
                tooltip="Raise the selected queued job's priority by one (asks first; higher runs first)"),
        Binding("minus", "priority(-1)", "Priority -", key_display="-", show=False,
                tooltip="Lower the selected queued job's priority by one (asks first)"),
        Binding("a", "toggle_all", "All", tooltip="Show every finished job, or only the latest 20"),
        Binding("enter", "open_run", "Open", show=False, tooltip="Open the selected job's run"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.show_all = False
        self.polls = 0  # listings applied (tests wait on it)
        self._polling = False
        self._rows: dict[int, dict[str, Any]] = {}
        self._cells: dict[int, list[str]] = {}

    @property
    def fmae(self) -> FmaeApp:
        return cast("FmaeApp", self.app)

    @property
    def table(self) -> DataTable:
        return self.query_one("#queue-table", DataTable)

    def compose(self) -> ComposeResult:
        from fmae.queue_ops import COLUMNS

        yield Header()
        yield Static(id="queue-bar")
        table: DataTable = DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        for name, _ in COLUMNS:
            table.add_column(name, key=name)
        yield table
        yield Static(id="queue-info")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.table.focus()

    # --- listing ---------------------------------------------------------------------------------------

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self._poll(self.show_all)

    @work(thread=True, group="queue-poll", exit_on_error=False)
    def _poll(self, show_all: bool) -> None:
        from fmae.queue import DB_NAME, Queue
        from fmae.queue_ops import queue_rows
        from fmae.scheduler import describe, holder

        runs_dir = self.fmae.project.runs_dir
        rows, hidden, error, scheduler = [], 0, None, "no scheduler running"
        try:
            if (runs_dir / DB_NAME).exists():  # looking must not create the queue
                rows, hidden = queue_rows(Queue(runs_dir), all_=show_all)
            info = holder(runs_dir)
            if info is not None:
                scheduler = f"scheduler {describe(info)}"
        except (FmaeError, OSError) as e:
            error = str(e)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        try:
            self.app.call_from_thread(self._apply, rows, hidden, scheduler, error)
        except RuntimeError:
            pass

    def _apply(self, rows: list[dict[str, Any]], hidden: int, scheduler: str, error: str | None) -> None:
        from fmae.queue_ops import COLUMNS, counts_line, row_state, table_cells

        self._polling = False
        table = self.table
        selected = self.selected_id
        fresh = {r["id"]: r for r in rows}
        for job_id in [k for k in self._cells if k not in fresh]:
            table.remove_row(str(job_id))
            del self._cells[job_id]
        names = [name for name, _ in COLUMNS]
        for job_id, row in fresh.items():
            cells = table_cells(row)
            old = self._cells.get(job_id)
            if old is None:
                table.add_row(*self._styled(cells, row_state(row)), key=str(job_id))
            elif old != cells:
                for name, new, was, shown in zip(names, cells, old, self._styled(cells, row_state(row))):
                    if new != was:
                        table.update_cell(str(job_id), name, shown, update_width=widens(table, name, shown))
            self._cells[job_id] = cells
        self._rows = fresh
        if selected in fresh:
            table.move_cursor(row=table.get_row_index(str(selected)))
        bar = Text(f"{len(rows)} job(s)" + (f": {counts_line(rows, hidden)}" if rows else " in the queue"))
        bar.append(f" · {scheduler}", "dim")
        if error:
            bar.append(f" · {error}", "bold red")
        self.query_one("#queue-bar", Static).update(bar)
        self._show_selected()
        self.polls += 1

    @staticmethod
    def _styled(cells: list[str], state: str) -> list[Any]:
        out: list[Any] = list(cells)
        out[1] = Text(cells[1], STATE_STYLE.get(state.split()[0], ""))
        return out

    @property
    def selected_id(self) -> int | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        except Exception:  # no cursor row yet
            return None
        return int(key.value) if key.value is not None else None

    @property
    def selected(self) -> dict[str, Any] | None:
        job_id = self.selected_id
        return self._rows.get(job_id) if job_id is not None else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        row = self.selected
        box = self.query_one("#queue-info", Static)
        if row is None:
            box.update(Text("no jobs: queue a matrix from Launch (l) or with `fmae queue add`", "dim")
                       if not self._rows else "")
            return
        text = Text(row["run_id"], "bold")
        needs = f"{row['gpus']} GPU(s)" if row["gpus"] else "a CPU slot"
        text.append(f" · job {row['id']} · priority {row['priority']} · needs {needs}")
        if row.get("error"):
            text.append("\n" + str(row["error"]), "red")
        box.update(text)

    # --- actions ---------------------------------------------------------------------------------------

    def _job(self):
        """The selected job, read fresh from the queue (the table may be a second old)."""
        from fmae.queue import Queue

        row = self.selected
        if row is None:
            self.notify("no job selected", severity="warning")
            return None, None
        q = Queue(self.fmae.project.runs_dir)
        job = q.get(int(row["id"]))
        if job is None:
            self.notify(f"job {row['id']} is no longer in the queue", severity="warning")
            return None, None
        return q, job

    def _do(self, what: Callable[[], str], title: str) -> None:
        try:
            message = what()
        except FmaeError as e:
            self.notify(str(e), title=title, severity="error", markup=False, timeout=10)
        else:
            self.notify(message, title=title, markup=False)
        self.poll()

    def action_cancel(self) -> None:
        from fmae.queue_ops import cancel_job, check_cancellable

        q, job = self._job()
        if job is None:
            return
        try:
            check_cancellable([job])
        except FmaeError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        how = "it has not started" if job.state == "queued" else "it gets SIGTERM, saves a checkpoint and stops"
        self.app.push_screen(ConfirmScreen(f"Cancel job {job.id}?", f"{job.run_id}\n({how})"),
                             lambda yes: self._do(lambda: cancel_job(q, job), "cancel") if yes else None)

    def action_retry(self) -> None:
        from fmae.queue_ops import check_retryable

        q, job = self._job()
        if job is None:
            return
        try:
            check_retryable([job])
        except FmaeError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.app.push_screen(ConfirmScreen(f"Retry job {job.id}?", f"{job.run_id}\n(it resumes from its last "
                                           "checkpoint when it has one)"),
                             lambda yes: self._retry(q, job) if yes else None)

    def _retry(self, q: Any, job: Any) -> None:
        self._retry_worker(q, job)

    @work(thread=True, group="queue-retry", exit_on_error=False)
    def _retry_worker(self, q: Any, job: Any) -> None:
        # retry may wait for the scheduler to record the old attempt's end: not on the UI thread
        from fmae.queue_ops import retry_job, start_scheduler

        project = self.fmae.project
        lines, error = [], None
        try:
            lines.append(retry_job(q, job, project.runs_dir))
            lines.append(start_scheduler(project))
        except FmaeError as e:
            error = str(e)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        try:
            self.app.call_from_thread(self._retried, lines, error)
        except RuntimeError:
            pass

    def _retried(self, lines: list[str], error: str | None) -> None:
        if error:
            self.notify(error, title="retry", severity="error", markup=False, timeout=10)
        else:
            self.notify("\n".join(lines), title="retry", markup=False)
        self.poll()

    def action_priority(self, step: int) -> None:
        from fmae.queue_ops import set_priority

        q, job = self._job()
        if job is None:
            return
        if job.state != "queued":
            self.notify(f"job {job.id} is {job.state}: priority orders queued jobs only", severity="warning")
            return
        new = job.priority + step
        self.app.push_screen(ConfirmScreen(f"Priority of job {job.id}: {job.priority} → {new}?",
                                           f"{job.run_id}\n(queued jobs run by priority, higher first)"),
                             lambda yes: self._do(lambda: set_priority(q, job, new), "priority") if yes else None)

    def action_toggle_all(self) -> None:
        self.show_all = not self.show_all
        self.notify("every finished job" if self.show_all else "the latest 20 finished jobs")
        self.poll()

    def action_open_run(self) -> None:
        row = self.selected
        if row is None:
            return
        from fmae_tui.screens.run import RunScreen

        self.app.push_screen(RunScreen(Path(row["path"])))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()
