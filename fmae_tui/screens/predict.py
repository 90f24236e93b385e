"""The Predict screen: from a finished AU or FER run, queue `fmae predict` on a video, an image or a folder
(a run folder with `task = "predict"`, so the queue gives it a slot as it gives training), then follow it —
its progress, the CSV's path, and a per-face timeline of the model's probabilities over the frames.

The screen never imports torch: it writes the run folder (fmae.predict.job), queues it, and reads the CSV."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Label, Static

from fmae.errors import FmaeError
from fmae.run_watch import CsvTail
from fmae_tui.screens.base import FmaeScreen, WorkEnded
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.widgets.curve_plot import CurvePlot

SHOWN = 4  # outputs drawn at once (80 columns hold no more legend); `a` shows the next ones
POLL_S = 1.0


class PredictScreen(FmaeScreen):
    DEFAULT_CSS = """
    PredictScreen #predict-head { height: auto; }
    PredictScreen #predict-form { height: auto; }
    PredictScreen #predict-form Horizontal { height: 3; }
    PredictScreen #predict-form Label { width: 12; padding: 1 1 0 0; }
    PredictScreen #predict-status { height: auto; }
    PredictScreen #predict-plot { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "app.back", "Back", tooltip="Back to the screen before"),
        Binding("ctrl+s", "queue", "Queue predict", tooltip="Queue the prediction (asks first)"),
        Binding("f", "next_face", "Next face", tooltip="Show the next face's timeline"),
        Binding("a", "next_outputs", "More AUs", tooltip=f"Show the next {SHOWN} AUs (or classes)"),
    ]

    def __init__(self, run: Path) -> None:
        super().__init__()
        self.run = Path(run)
        self.model_run: Path | None = None
        self.predict_run: Path | None = None
        self.tail: CsvTail | None = None
        self.status: dict[str, Any] = {}
        self.face = 0
        self.first_output = 0
        self.polls = 0  # looks at the prediction's folder (tests wait on it)
        self._polling = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="predict-head")
        with Vertical(id="predict-form"):
            with Horizontal():
                yield Label("source ")
                yield Input(placeholder="a video, an image or a folder of images", id="predict-source")
            with Horizontal():
                yield Label("threshold ")
                yield Input(value="0.5", placeholder="0.5, tuned or a value", id="predict-threshold")
        yield Static(id="predict-status")
        yield CurvePlot("probability", xlabel="frame", id="predict-plot", ylim=(0.0, 1.0))
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        from fmae.runs import RunDir

        try:
            cfg = RunDir.open(self.run).read_config()
        except FmaeError as e:
            self.query_one("#predict-head", Static).update(str(e))
            return
        if cfg.get("task") == "predict":
            self.model_run = Path(str(cfg.get("source_run", "")))
            self._follow(self.run)
        else:
            self.model_run = self.run
            self.query_one("#predict-source", Input).focus()
        self.sub_title = f"Predict with {self.model_run.name}"
        self.query_one("#predict-head", Static).update(
            f"model: {self.model_run.name}  ({cfg.get('source_task', cfg.get('task', '?'))} {cfg.get('dataset', '')}, "
            f"{cfg.get('model', '')}) — a model trained on synthetic faces will not read real expressions well")
        self.set_interval(POLL_S, self._tick)

    # --- queueing ------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "queue":
            return self.predict_run is None
        return True

    def action_queue(self) -> None:
        source = self.query_one("#predict-source", Input).value.strip()
        threshold = self.query_one("#predict-threshold", Input).value.strip() or "0.5"
        if not source:
            self.notify("name a video, an image or a folder of images first", severity="warning")
            return
        self.app.push_screen(ConfirmScreen(f"Queue a prediction on {Path(source).name}?",
                                           f"model {self.model_run.name}, threshold {threshold}\n"
                                           "(it runs as a queue job; the CSV lands in its run folder)"),
                             lambda yes: self._queue(source, threshold) if yes else None)

    class Queued(WorkEnded):
        """Queueing the prediction ended: `result` is (its run folder, what was said)."""

    def _queue(self, source: str, threshold: str) -> None:
        self.in_thread(lambda: queue_prediction(self.fmae.project, self.model_run, source, threshold), self.Queued,
                       group="predict-add")

    def on_predict_screen_queued(self, message: Queued) -> None:
        run, lines = message.result or (None, [])
        if self.tell(message.error, lines, "predict", failed="not queued"):
            self._follow(run.path)

    def _follow(self, path: Path) -> None:
        from fmae.predict.job import CSV_NAME

        self.predict_run = Path(path)
        self.tail = CsvTail(self.predict_run / CSV_NAME)
        self.query_one("#predict-form").display = False
        self.refresh_bindings()
        self._tick()

    # --- following -------------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.predict_run is None or self._polling:
            return
        self._polling = True
        self._look()

    class Looked(WorkEnded):
        """A look at the prediction's folder ended: `result` is (its status, CSV rows new)."""

    def _look(self) -> None:
        self.in_thread(self._read, self.Looked, group="predict-look")

    def _read(self) -> tuple[dict[str, Any], int]:
        status: dict[str, Any] = {}
        try:
            status = json.loads((self.predict_run / "status.json").read_text())
        except (OSError, ValueError):
            pass  # not written yet, or being replaced: the next look reads it
        return status, self.tail.read_new() if self.tail else 0

    def on_predict_screen_looked(self, message: Looked) -> None:
        status, new = message.result or ({}, 0)
        self._show(status, new)

    def _show(self, status: dict[str, Any], new: int) -> None:
        self._polling = False
        self.polls += 1
        changed = status != self.status
        self.status = status
        if changed or new or self.polls == 1:
            self._draw()

    def faces(self) -> list[int]:
        return sorted({int(r["face_id"]) for r in self.tail.rows if r.get("success") == "1"}) if self.tail else []

    def _draw(self) -> None:
        from fmae.predict.job import CSV_NAME

        state = self.status.get("state", "?")
        done, total = self.status.get("step"), self.status.get("total_steps")
        progress = f"{done}/{total} frames" if done is not None and total else "starting"
        faces = self.faces()
        face_text = f"face {self.face} of ids {', '.join(map(str, faces))} (f: next)" if faces else "no face yet"
        error = f"\n{self.status['error']}" if self.status.get("error") else ""
        self.query_one("#predict-status", Static).update(
            f"{self.predict_run.name}: {state}, {progress} — {face_text}\nCSV: {self.predict_run / CSV_NAME}{error}")
        plot = self.query_one("#predict-plot", CurvePlot)
        plot.clear_series()
        names = self.tail.outputs() if self.tail else []
        shown = names[self.first_output:self.first_output + SHOWN]
        rows = [r for r in (self.tail.rows if self.tail else []) if r.get("success") == "1"
                and int(r["face_id"]) == self.face]
        sources = {r["source"] for r in rows}
        # One video: its frame numbers; several sources (a folder of images): the rows in order.
        xs = [float(r["frame"]) for r in rows] if len(sources) <= 1 else [float(i + 1) for i in range(len(rows))]
        plot.xlabel = "frame" if len(sources) <= 1 else "image (in order)"
        for name in shown:
            plot.set_series(name, xs, [float(r[f"{name}_p"]) for r in rows])
        plot.title = f"face {self.face}: probability" + (f" ({len(names)} outputs, a: next {SHOWN})" if len(names) > SHOWN else "")
        plot.replot()

    def action_next_face(self) -> None:
        faces = self.faces()
        if faces:
            later = [f for f in faces if f > self.face]
            self.face = later[0] if later else faces[0]
            self._draw()

    def action_next_outputs(self) -> None:
        names = self.tail.outputs() if self.tail else []
        if names:
            self.first_output = (self.first_output + SHOWN) % len(names)
            self._draw()


def queue_prediction(project: Any, model_run: Path, source: str, threshold: str) -> tuple[Any, list[str]]:
    """A predict run folder for `source` with `model_run`'s model, queued; (the run, what was said)."""
    from fmae.predict.job import create_predict_run
    from fmae.queue import Queue
    from fmae.queue_ops import default_gpus_per_run, start_scheduler

    run = create_predict_run(project.runs_dir, model_run, [source], threshold=threshold,
                             command=["fmae-tui", "predict"])
    job = Queue(project.runs_dir).add(run, gpus=default_gpus_per_run(project))
    return run, [f"queued job {job.id}: {run.id}", start_scheduler(project)]
