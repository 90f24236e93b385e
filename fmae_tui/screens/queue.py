"""The Queue screen: queued and running jobs (and the latest finished ones) with their slot and progress,
live; cancel, retry and reprioritise through `fmae.queue_ops`, the code path of `fmae queue …`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.widgets import Footer, Header, Static

from fmae.errors import FmaeError
from fmae_tui.screens.base import WorkEnded
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.screens.polled import PolledScreen
from fmae_tui.widgets.virtual_table import VirtualTable

STATE_STYLE = {"running": "bold green", "queued": "cyan", "done": "", "failed": "bold red", "cancelled": "yellow",
               "corrupt": "bold red", "cancelling": "yellow", "starting": "green", "submitted": "green"}
WIDE = 110  # from this width: the slot, the model's full name and the age in the queue
WIDEST = 170  # from this width: the run id as well


def _percent(row: dict[str, Any]) -> str:
    """"40% e2/5" from the run's status.json; "-" before it reports."""
    step, total, epoch, epochs = row.get("step"), row.get("total_steps"), row.get("epoch"), row.get("epochs")
    parts = []
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        parts.append(f"{100 * step // total}%")
    if isinstance(epoch, int):
        parts.append(f"e{epoch}/{epochs if isinstance(epochs, int) else '?'}")
    return " ".join(parts) or "-"


def screen_cells(row: dict[str, Any], wide: bool) -> dict[str, str]:
    """The row's cells as this screen shows them (the CLI's `queue ls` has its own, every column)."""
    from fmae.elapsed import age, duration
    from fmae.queue_ops import row_state
    from fmae_tui.run_kind import cell_fields

    state = row_state(row)
    live = state.split()[0] in ("running", "cancelling")
    model = str(row.get("model") or "")
    cells = {"id": str(row["id"]), "state": state, "dataset": str(row.get("dataset") or "-"),
             "cell": cell_fields({"task": row.get("task"), "fold": row.get("fold"), "seed": row.get("seed"),
                                  "lambda_id": row.get("lambda_id")}) or "-",
             "model": model if wide else model.removeprefix("vit_"), "slot": str(row.get("slot") or "-"),
             "progress": "-" if row["state"] == "queued" else ("starting" if live and _percent(row) == "-"
                                                              else _percent(row)),
             "elapsed": duration(row.get("elapsed_s")),
             "ETA": duration(row.get("eta_s")) if live else "-", "age": age(row["age_s"]),
             "run id": str(row.get("run_id") or "")}
    return cells


def laid_out(rows: list[dict[str, Any]], wide: bool, names: tuple[str, ...]) -> list[tuple[dict[str, Any], list[str]]]:
    """The rows in the screen's order, each with the text of its cells: made in the worker thread, so the
    app's thread only compares text (10,000 jobs cost ~0.2 s of cell-making a look)."""
    from fmae.queue_ops import work_order

    return [(row, [cells[n] for n in names]) for row in work_order(rows)
            for cells in (screen_cells(row, wide),)]


def screen_columns(width: int) -> tuple[str, ...]:
    """The columns for a terminal this wide."""
    if width >= WIDEST:
        return ("id", "state", "dataset", "cell", "model", "slot", "progress", "elapsed", "ETA", "age", "run id")
    if width >= WIDE:
        return ("id", "state", "dataset", "cell", "model", "slot", "progress", "elapsed", "ETA", "age")
    return ("id", "state", "dataset", "cell", "model", "progress", "elapsed", "ETA")


class QueueScreen(PolledScreen):
    SUB_TITLE = "Queue"
    POLL_S = 1.0
    BINDINGS = [
        Binding("c", "cancel", "Cancel job", tooltip="Cancel the selected job (asks first): a running one gets SIGTERM"),
        Binding("r", "retry", "Retry", tooltip="Queue a failed or cancelled job again (asks first); it resumes"),
        Binding("plus,equals_sign", "priority(1)", "Priority +", key_display="+",
                tooltip="Raise the selected queued job's priority by one (higher runs first)"),
        Binding("minus", "priority(-1)", "Priority -", key_display="-",
                tooltip="Lower the selected queued job's priority by one"),
        Binding("a", "toggle_all", "All", show=False, tooltip="Show every finished job, or only the latest 20"),
        Binding("enter", "open_run", "Open", tooltip="Open the selected job's run"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.show_all = False
        self.polls = 0  # listings applied (tests wait on it)
        self._polling = False
        self._wide = False
        self._columns: tuple[str, ...] = ()
        self._rows: dict[int, dict[str, Any]] = {}
        self._cells: dict[int, list[str]] = {}  # job id -> the text of its cells on screen
        self._cancels: dict[int, Any] = {}  # job id -> the job, for cancels whose outcome is not told yet
        self._revived: str | None = None  # the last "scheduler started" said: not repeated every poll
        self._statuses: Any = None  # queue_ops.StatusCache, made in the first look (the module loads there)
        self._statuses_of: Path | None = None  # the runs folder it holds the jobs of

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#queue-table", VirtualTable)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="queue-bar")
        yield VirtualTable(id="queue-table")
        yield Static(id="queue-info")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self._set_columns(self.app.size.width)
        self.table.focus()

    def on_resize(self, event: Resize) -> None:
        if screen_columns(event.size.width) != self._columns:
            self._set_columns(event.size.width)
            self._apply_rows(laid_out(list(self._rows.values()), self._wide, self._columns))

    def _set_columns(self, width: int) -> None:
        self._wide, self._columns = width >= WIDE, screen_columns(width)
        table = self.table
        table.clear(columns=True)
        self._cells.clear()
        for name in self._columns:
            table.add_column(name, key=name)

    # --- listing ---------------------------------------------------------------------------------------

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self._poll(self.show_all)

    class Listed(WorkEnded):
        """A look at the queue ended: `result` is (rows laid out with their cells, hidden, scheduler line,
        cancel outcomes told, the "scheduler started" line or None)."""

    def _poll(self, show_all: bool) -> None:
        # the queue or the runs folder unreadable (FmaeError, OSError) is said as it is, in the bar
        wide, names = self._wide, self._columns

        def look() -> tuple:
            rows, *rest = self._list(show_all)
            return (laid_out(rows, wide, names), *rest)

        self.in_thread(look, self.Listed, group="queue-poll", plain=(FmaeError, OSError))

    def _list(self, show_all: bool) -> tuple[list[dict[str, Any]], int, str, dict[int, str], str | None]:
        from fmae.queue import DB_NAME, Queue
        from fmae.queue_ops import StatusCache, cancel_outcome, queue_rows
        from fmae.scheduler import describe, holder

        runs_dir = self.fmae.project.runs_dir
        rows, hidden, scheduler, told, revived = [], 0, "no scheduler running", {}, None
        if self._statuses is None or self._statuses_of != runs_dir:  # a reload may move the runs folder
            self._statuses, self._statuses_of = StatusCache(), runs_dir
        if (runs_dir / DB_NAME).exists():  # looking must not create the queue
            rows, hidden = queue_rows(Queue(runs_dir), all_=show_all, cache=self._statuses)
        info = holder(runs_dir)
        if info is None and rows:  # unfinished work and no scheduler (it crashed): bring it back
            from fmae.scheduler import ensure_running

            revived = ensure_running(self.fmae.project, quiet=True)
            info = holder(runs_dir)
        if info is not None:
            scheduler = f"scheduler {describe(info)}"
        for job_id, job in list(self._cancels.items()):
            outcome = cancel_outcome(job)
            if outcome is not None:
                told[job_id] = outcome
        return rows, hidden, scheduler, told, revived

    def on_queue_screen_listed(self, message: Listed) -> None:
        rows, hidden, scheduler, told, revived = message.result or ([], 0, "no scheduler running", {}, None)
        if revived and revived != self._revived:
            self._revived = revived
            self.notify(revived, title="queue", markup=False)
        self._apply(rows, hidden, scheduler, message.error, told)

    def _apply(self, shown: list[tuple[dict[str, Any], list[str]]], hidden: int, scheduler: str, error: str | None,
               told: dict[int, str] | None = None) -> None:
        from fmae.queue_ops import counts_line

        self._polling = False
        for job_id, outcome in (told or {}).items():
            if self._cancels.pop(job_id, None) is not None:
                self.notify(outcome, title="cancel", markup=False)
        if shown and len(shown[0][1]) != len(self._columns):  # laid out for the columns before a resize
            shown = laid_out([row for row, _ in shown], self._wide, self._columns)
        self._apply_rows(shown)
        rows = [row for row, _ in shown]
        bar = Text(f"{len(rows)} job(s)" + (f": {counts_line(rows, hidden)}" if rows else " in the queue"))
        bar.append(f" · {scheduler}", "dim")
        if error:
            bar.append(f" · {error}", "bold red")
        self.query_one("#queue-bar", Static).update(bar)
        self._show_selected()
        self.polls += 1

    def _apply_rows(self, shown: list[tuple[dict[str, Any], list[str]]]) -> None:
        """Running first, then queued in starting order, then finished; the cursor stays on its job. Only
        the rows whose text changed are handed to the table."""
        from fmae.queue_ops import row_state

        table = self.table
        fresh = {row["id"]: row for row, _ in shown}
        table.drop_rows([str(job_id) for job_id in self._cells if job_id not in fresh])
        changed = [(row, cells) for row, cells in shown if self._cells.get(row["id"]) != cells]
        table.put_rows((str(row["id"]), self._styled(cells, row_state(row))) for row, cells in changed)
        self._cells = {row["id"]: cells for row, cells in shown}
        self._rows = fresh
        order = [str(job_id) for job_id in fresh]
        if order != table.row_keys:
            table.set_order(order)

    @staticmethod
    def _styled(cells: list[str], state: str) -> list[Any]:  # the state is the second column
        out: list[Any] = list(cells)
        out[1] = Text(cells[1], STATE_STYLE.get(state.split()[0], ""))
        return out

    @property
    def selected_id(self) -> int | None:
        key = self.table.cursor_key
        return None if key is None else int(key)

    @property
    def selected(self) -> dict[str, Any] | None:
        job_id = self.selected_id
        return self._rows.get(job_id) if job_id is not None else None

    def on_virtual_table_row_highlighted(self, event: VirtualTable.RowHighlighted) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        row = self.selected
        box = self.query_one("#queue-info", Static)
        if row is None:
            box.update(Text("no jobs: queue a matrix from Launch (l) or with `fmae queue add`", "dim")
                       if not self._rows else "")
            return
        text = Text(row["run_id"], "bold")
        text.append(f" · job {row['id']} · priority {row['priority']}")
        if row["state"] == "queued":  # what it waits for; a started job has its slot
            text.append(f" · needs {row['gpus']} GPU(s)" if row["gpus"] else " · needs a CPU slot")
        elif row.get("slot"):
            text.append(f" · on {row['slot']}" + (f" ({row['host']})" if row.get("host") else ""))
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
        q, job = self._job()
        if job is not None:
            self.confirm_cancel(job, lambda: self._cancel(q, job))

    def _cancel(self, q: Any, job: Any) -> None:
        from fmae.queue_ops import cancel_job

        def cancel() -> str:
            message = cancel_job(q, job)
            if job.state != "queued" and "finished before" not in message:
                self._cancels[job.id] = job  # the next looks say how it ended: cancelled, or done anyway
            return message

        self._do(cancel, "cancel")

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

    class Retried(WorkEnded):
        """A retry ended: `result` is what it said, line by line."""

    def _retry(self, q: Any, job: Any) -> None:
        # retry may wait for the scheduler to record the old attempt's end: not on the UI thread
        from fmae.queue_ops import retry_job, start_scheduler

        project = self.fmae.project
        self.in_thread(lambda: [retry_job(q, job, project.runs_dir), start_scheduler(project)], self.Retried,
                       group="queue-retry")

    def on_queue_screen_retried(self, message: Retried) -> None:
        self.tell(message.error, message.result, "retry")
        self.poll()

    def action_priority(self, step: int) -> None:
        from fmae.queue_ops import set_priority

        q, job = self._job()
        if job is None:
            return
        if job.state != "queued":
            self.notify(f"job {job.id} is {job.state}: priority orders queued jobs only", severity="warning")
            return
        # Nothing is lost by a priority step (another press undoes it): no question asked.
        self._do(lambda: set_priority(q, job, job.priority + step), "priority")

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

    def on_virtual_table_row_selected(self, event: VirtualTable.RowSelected) -> None:
        self.action_open_run()
