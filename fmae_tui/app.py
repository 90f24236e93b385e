"""`fmae-tui`: the terminal app. `create_app` builds it for the command line and for the tests alike."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import App
from textual.binding import Binding

from fmae import __version__
from fmae.config import ProjectConfig, load_project
from fmae.errors import FmaeError
from fmae_tui.screens.base import WorkEnded, in_thread
from fmae_tui.screens.runs import RunsScreen

# Only the Runs screen is imported here: the first paint waits on every import, so the other screens, the
# run alerts and the scheduler load where they are first used.
if TYPE_CHECKING:
    from fmae_tui.run_alerts import RunAlerts

QUIT_AGAIN_S = 5.0  # a second quit within this many seconds leaves while data is still being generated
# Allocations between the cyclic garbage collector's passes over young objects while the app runs (Python's
# default: 700). A first look at 10,000 runs makes ~1M objects that all stay (each run's dicts and cells);
# at the default the collector walks them again and again as they come: a third of the look's CPU.
GC_YOUNG = 50_000


class FmaeApp(App[None]):
    """Holds the project config in force; screens read it from here and ask here to reload it."""

    TITLE = "fmae"
    CSS_PATH = "app.tcss"
    ALERTS_S = 3.0  # how often the app looks for runs that ended (run_alerts.py), whatever the screen
    # The footer shows help, quit and back; every screen adds its own most-used keys, home the ways out.
    # Going to a main screen works from everywhere, listed under `?` (80 columns hold no more).
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?",
                tooltip="List every key of this screen"),
        Binding("q", "quit", "Quit", tooltip="Leave the app"),
        Binding("escape", "back", "Back", tooltip="Back to the screen before (the Runs screen is home)"),
        Binding("l", "open('launch')", "Launch", show=False, tooltip="Queue a matrix of runs: folds × seeds × λ"),
        Binding("j", "open('queue')", "Queue", show=False, tooltip="The queue's jobs: cancel, retry, reprioritise"),
        Binding("R", "open('results')", "Results", show=False,
                tooltip="Per-AU tables over folds and seeds, the paper beside them"),
        Binding("g", "open('gpus')", "GPUs", show=False,
                tooltip="Utilisation, memory and the run on each GPU (or the CPU and its jobs)"),
        Binding("d", "open('datasets')", "Datasets", show=False, tooltip="The benchmarks and their data"),
    ]

    def __init__(self, project: ProjectConfig, config: Path | None = None, runs_dir: Path | None = None) -> None:
        super().__init__()
        self.project = project
        self.generating: set[str] = set()  # datasets whose synthetic copy a worker thread is writing
        self._config_arg = config
        self._runs_dir_arg = runs_dir
        self._quit_warned_at = -QUIT_AGAIN_S
        self._alerts: RunAlerts | None = None
        self._runs_meaning = 0  # bumped by a reloaded fmae.toml and a new RunAlerts: what runs_changes says moves
        self._opened = time.time()  # the alerts tell of runs that ended since then
        self._gc_before = gc.get_threshold()  # given back when the app ends (tests run many apps in one process)
        self._alerts_out = False  # a look is out: the next tick waits for it
        self.compared: dict[Path, Path] = {}  # run folder -> the run it was last compared with (Run's D)
        if self.console.color_system in ("standard", "windows"):
            # A 16-colour terminal: use its own palette rather than approximating RGB theme colours,
            # which can turn a yellow warning into a red one.
            self.theme = "ansi-dark"

    def on_mount(self) -> None:
        gc.set_threshold(GC_YOUNG, *self._gc_before[1:])
        # Runs is home. Before the first run there is nothing to show there: start where setup starts,
        # on Datasets, with Runs one escape away.
        self.push_screen(RunsScreen())
        if not _has_runs(self.project.runs_dir):
            from fmae_tui.screens.datasets import DatasetsScreen

            self.push_screen(DatasetsScreen())
        self.call_after_refresh(self._start_scheduler)  # its thread imports the queue: after the first paint
        # The first look waits a tick: the Runs screen's first scan reads every run folder too (the alerts'
        # scanner is made there, after the first paint).
        self.set_interval(self.ALERTS_S, self._look_for_alerts)

    def on_unmount(self) -> None:
        gc.set_threshold(*self._gc_before)
        gc.unfreeze()  # the Runs rows frozen out of the collector's walks (screens/runs.py): collectable again
        gc.enable()  # off during the Runs screen's first look, were the app to end before it did

    class SchedulerChecked(WorkEnded):
        """The look for queued work with no scheduler ended: `result` is what starting one said (None: no
        need)."""

    def _start_scheduler(self) -> None:
        in_thread(self, lambda: _revive_scheduler(self.project), self.SchedulerChecked, group="scheduler")

    def on_fmae_app_scheduler_checked(self, message: SchedulerChecked) -> None:
        if message.error is not None:
            self.notify(f"scheduler not started: {message.error}", title="queued work", severity="error",
                        markup=False)
        elif message.result is not None:
            self.notify(message.result, title="queued work", severity="information", markup=False)

    class RunsEnded(WorkEnded):
        """A look for runs that ended came back: `result` is their RunAlerts."""

    def _look_for_alerts(self) -> None:
        if self._alerts_out:
            return
        if self._alerts is None or self._alerts.scanner.runs_dir != self.project.runs_dir:
            from fmae_tui.run_alerts import RunAlerts

            first = self._alerts is None
            self._alerts = RunAlerts(self.project.runs_dir)  # at start, and after a reload moved the folder
            self._runs_meaning += 1
            if first:
                self._alerts.since = self._opened
        self._alerts_out = True
        in_thread(self, self._alerts.look, self.RunsEnded, group="run-alerts", plain=(FmaeError, OSError))

    @property
    def runs_changes(self) -> tuple[int, int] | None:
        """Moves whenever the run alerts' look (every ALERTS_S) finds a run come, gone, or with another
        state or summary, and when fmae.toml is read again; None before their first look."""
        alerts = self._alerts
        return None if alerts is None or not alerts.changes else (self._runs_meaning, alerts.changes)

    def on_fmae_app_runs_ended(self, message: RunsEnded) -> None:
        # An unreadable runs folder is the Runs screen's to say (once); here it only means nothing to tell.
        self._alerts_out = False
        for alert in message.result or []:
            self.notify(alert.message, title=alert.title, severity=alert.severity, markup=False, timeout=alert.timeout)
        if message.result and self.project.bell:
            self.bell()

    def action_open(self, name: str) -> None:
        """Go to a main screen. One already open further down comes back to the top (the screens above it
        close), so `esc` always returns to the screen the user came from and the stack stays short."""
        from fmae_tui.screens.datasets import DatasetsScreen
        from fmae_tui.screens.gpus import GpusScreen
        from fmae_tui.screens.launch import LaunchScreen
        from fmae_tui.screens.queue import QueueScreen
        from fmae_tui.screens.results import ResultsScreen

        kind = {"launch": LaunchScreen, "queue": QueueScreen, "gpus": GpusScreen, "datasets": DatasetsScreen,
                "results": ResultsScreen}[name]
        if isinstance(self.screen, kind):
            return
        if any(isinstance(s, kind) for s in self.screen_stack):
            while not isinstance(self.screen, kind):
                self.pop_screen()
            return
        self.push_screen(kind())

    def action_back(self) -> None:
        self.pop_screen()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":  # nothing under the home screen to go back to
            return len(self.screen_stack) > 2
        return True

    def reload_project(self) -> bool:
        """Read fmae.toml again (the same discovery as at start). On a bad config keep the old one."""
        try:
            self.project = load_project(self._config_arg, self._runs_dir_arg)
        except FmaeError as e:
            self.notify(str(e), title="config not reloaded", severity="error", markup=False, timeout=10)
            return False
        self._runs_meaning += 1
        return True

    async def action_quit(self) -> None:
        """Quitting while data is being generated asks for a second press, within a few seconds."""
        if self.generating and time.monotonic() - self._quit_warned_at > QUIT_AGAIN_S:
            self._quit_warned_at = time.monotonic()
            self.notify(f"still generating {', '.join(sorted(self.generating))}: press q again to quit "
                        "(an unfinished copy is made again on next use)", severity="warning")
            return
        self.exit()

    def action_help(self) -> None:
        from fmae_tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen.active_bindings, self.get_key_display))


def _revive_scheduler(project: ProjectConfig) -> str | None:
    """Queued work and no scheduler (the machine rebooted, say): start one, as `fmae queue add` does; what
    that said, or None when nothing was needed."""
    from fmae.queue import DB_NAME, Queue

    runs_dir = project.runs_dir
    if not (runs_dir / DB_NAME).exists():  # no queue: the scheduler's code need not even load
        return None
    from fmae.scheduler import ensure_running, holder

    if holder(runs_dir) is not None:
        return None
    if not Queue(runs_dir).jobs(states=("queued",)):
        return None
    return ensure_running(project)


def _has_runs(runs_dir: Path) -> bool:
    """Whether the runs folder holds any folder that may be a run (a cheap look, no reading)."""
    try:
        with os.scandir(runs_dir) as entries:
            return any(not e.name.startswith(".") and e.is_dir() for e in entries)
    except OSError:
        return False


def create_app(config: Path | None = None, runs_dir: Path | None = None) -> FmaeApp:
    """Load the project config (raises FmaeError with a one-line message) and build the app on it."""
    return FmaeApp(load_project(config, runs_dir), config, runs_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fmae-tui",
        description="The fmae terminal app: the benchmarks, where fmae.toml puts them, and their synthetic copies.",
    )
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="fmae.toml to use (default: $FMAE_CONFIG, else the nearest one upwards)")
    parser.add_argument("--runs-dir", type=Path, metavar="DIR", help="runs folder (overrides fmae.toml)")
    parser.add_argument("--version", action="version", version=f"fmae-tui {__version__}")
    args = parser.parse_args(argv)
    try:
        app = create_app(args.config, args.runs_dir)
    except FmaeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    # Our own loop, so that leaving mid-generation does not wait on the worker thread (asyncio.run would).
    loop = asyncio.new_event_loop()
    app.run(loop=loop)
    code = app.return_code or 0
    if app.generating:
        print(f"fmae-tui: left while generating {', '.join(sorted(app.generating))}; the unfinished copy "
              "is made again on next use", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the generation thread cannot be interrupted; its partial output is never used
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
