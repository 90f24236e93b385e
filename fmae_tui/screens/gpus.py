"""The GPUs screen: utilisation, memory and temperature per GPU (NVML), and which run holds each slot. On
a machine without a GPU it says so and shows the CPU instead: its load and memory, and per CPU slot the
running job's process (with its children: loader workers, DDP ranks), its CPU % and resident memory."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from fmae.errors import FmaeError
from fmae_tui.screens.base import WorkEnded
from fmae_tui.screens.polled import PolledScreen
from fmae_tui.widgets.row_table import RowTable


def bar(fraction: float, width: int = 10) -> str:
    """A text gauge, "█████░░░░░", so a 16-colour terminal shows the level without colour."""
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return "█" * full + "░" * (width - full)


def gather(project: Any) -> dict[str, Any]:
    """Everything the screen shows, read off the UI thread: NVML's snapshot, the slots of the scheduler's
    plan and the running jobs that hold them."""
    from fmae.gpus import cpu, plan_slots, probe, process_usage
    from fmae.queue import DB_NAME, Queue, read_status_fast

    gpus, reason = probe()
    try:
        slots, plan_error = plan_slots(project, gpus), None
    except FmaeError as e:
        slots, plan_error = [], str(e)
    holders: dict[str, list[Any]] = {}
    if (project.runs_dir / DB_NAME).exists():
        for job in Queue(project.runs_dir).jobs(states=("running",)):
            for name in (job.slot or "").split("+"):
                if name:
                    holders.setdefault(name, []).append(job)
    usage: dict[int, Any] = {}  # job id -> its process tree's CPU % and memory
    for jobs in holders.values():
        for job in jobs:
            pid = job.pid or (read_status_fast(job.path) or {}).get("pid")
            if pid:
                usage[job.id] = process_usage(int(pid))
    return {"gpus": gpus, "reason": reason, "slots": slots, "plan_error": plan_error, "holders": holders,
            "cpu": None if gpus else cpu(), "usage": usage}


class GpusScreen(PolledScreen):
    SUB_TITLE = "GPUs"
    POLL_S = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0
        self._polling = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="gpus-bar")
        yield RowTable(id="gpus-table")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self._poll()

    class Gathered(WorkEnded):
        """A look at the GPUs (or the CPU) ended: `result` is what `gather` found."""

    def _poll(self) -> None:
        # NVML or the queue misbehaving must not end the app: said in the bar
        self.in_thread(lambda: gather(self.fmae.project), self.Gathered, group="gpus-poll",
                       plain=(FmaeError, OSError))

    def on_gpus_screen_gathered(self, message: Gathered) -> None:
        self._apply(message.result, message.error)

    def _apply(self, facts: dict[str, Any] | None, error: str | None) -> None:
        self._polling = False
        self.polls += 1
        table = self.query_one(DataTable)
        info = self.query_one("#gpus-bar", Static)
        if facts is None:
            info.update(Text(error or "?", "bold red"))
            return
        gpus, slots, holders = facts["gpus"], facts["slots"], facts["holders"]
        row = table.cursor_row
        table.clear(columns=True)
        project = self.fmae.project
        if gpus:
            head = Text(f"{len(gpus)} GPU(s) by NVML · {project.runs_per_gpu} run(s) per GPU · "
                        f"start a run with ≥ {project.min_free_memory_gib:g} GiB free")
            for name in ("GPU", "name", "util", "memory", "temp", "runs"):
                table.add_column(name, key=name)
            for g in gpus:
                mine = [s for s in slots if s.gpus and s.gpus[0] == g.index]
                runs = [f"{s.name}: {job.run_id}" for s in mine for job in holders.get(s.name, [])]
                if not mine:
                    runs = ["(not in compute.gpus)"]
                util = "n/a" if g.utilization_pct is None else f"{bar(g.utilization_pct / 100, 8)} {g.utilization_pct:3d}%"
                used = g.memory_used_mib / max(1, g.memory_total_mib)
                memory = f"{bar(used, 8)} {g.memory_used_mib / 1024:.1f}/{g.memory_total_mib / 1024:.0f} GiB"
                temp = "n/a" if g.temperature_c is None else f"{g.temperature_c} °C"
                table.add_row(str(g.index), g.short_name, util, memory, temp, "\n".join(runs) or "free",
                              height=max(1, len(runs)))
        else:
            why = "compute.device = cpu" if project.device == "cpu" else (facts["reason"] or "NVML found none")
            c = facts["cpu"]
            head = Text(f"no GPU here ({why}): runs use {len(slots)} CPU slot(s) "
                        f"(compute.cpu_slots = {project.cpu_slots})\n")
            used = c.memory_used_mib / max(1, c.memory_total_mib)
            head.append(f"CPU    {bar(c.percent / 100, 8)} {c.percent:3.0f}% of {c.cores} core(s) · load "
                        f"{c.load[0]:.2f} {c.load[1]:.2f} {c.load[2]:.2f} (1, 5, 15 min)\n")
            head.append(f"memory {bar(used, 8)} {c.memory_used_mib / 1024:.1f}/{c.memory_total_mib / 1024:.1f} GiB used")
            for name in ("slot", "run", "pid", "CPU %", "memory", "procs"):
                table.add_column(name, key=name)
            narrow = self.app.size.width < 100  # the date in a run id is its age: the Queue screen has it

            def run_name(run_id: str) -> str:
                return run_id.split("-", 1)[-1] if narrow else run_id

            for s in slots:
                jobs = holders.get(s.name, [])
                if not jobs:
                    table.add_row(s.name, "free", "", "", "", "")
                for job in jobs:
                    u = facts["usage"].get(job.id)
                    if u is None:
                        table.add_row(s.name, run_name(job.run_id), str(job.pid or "-"), "gone", "-", "-")
                    else:
                        # % of one core, as top counts: a run using both of two cores shows 200%
                        table.add_row(s.name, run_name(job.run_id), str(u.pid), f"{u.percent:4.0f}%",
                                      f"{u.rss_mib / 1024:.2f} GiB", str(u.processes))
        if facts["plan_error"]:
            head.append(f"\n{facts['plan_error']}", "bold red")
        info.update(head)
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))
