"""The Run screen: one run, live — curves of loss, lr and the test score per epoch, the best epoch's
per-AU F1, the end of train.log, the resolved config and editable notes.

A worker thread looks at the run folder a few times a second and reads only what is new (metrics.jsonl
and train.log by byte offset, other files when their stat changed); one look makes at most one redraw.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, RichLog, Static, TabbedContent, TabPane

from fmae.errors import FmaeError
from fmae.metric_catalogue import ACCURACY, F1_05, F1_BEST
from fmae.run_watch import RunPoller, RunUpdate
from fmae.runs import FINAL_STATES, STATES, parse_utc
from fmae.summary import as_summary
from fmae_tui.run_kind import (METRIC_LONG, au_loss, beside_all_positive, degenerate_text, headline_at, is_degenerate,
                               kind_label, short_metric)
from fmae_tui.screens.base import FmaeScreen, WorkEnded
from fmae_tui.widgets.curve_plot import CurvePlot
from fmae_tui.widgets.feature_scatter import FeatureScatter
from fmae_tui.widgets.notes_editor import NotesEditor
from fmae_tui.widgets.per_au_curves import per_au_table
from fmae_tui.widgets.runs_table import STATE_STYLE, ago
from fmae_tui.widgets.scores_table import ScoresTable

LOG_LINES = 200
TABS = {"curves": "Train loss, lr and the test score per epoch",
        "scores": "The best epoch's F1@0.5, F1 at the best threshold and AUC per AU",
        "log": f"The last {LOG_LINES} lines of train.log", "config": "The resolved config (run.toml)",
        "notes": "notes.md", "per_au": "Each AU's F1@0.5 and best-threshold F1 over the epochs (also a)",
        "features": "The t-SNE points `fmae features` wrote for this run, as a scatter (b: the colouring)"}
TAB_TITLES = {"curves": "1 Curves", "scores": "2 Scores", "log": "3 Log", "config": "4 Config", "notes": "5 Notes",
              "per_au": "6 Per-AU", "features": "7 Features"}
PROVENANCE_KEYS = ("command", "git_commit", "fmae_version", "host")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _value_text(value: Any) -> Text:
    if isinstance(value, float):
        return Text(f"{value:g}")
    if isinstance(value, list):
        return Text(" ".join(map(str, value)))
    if isinstance(value, dict):
        return Text(", ".join(f"{k}={v}" for k, v in value.items()))
    return Text(str(value))


class RunScreen(FmaeScreen):
    SUB_TITLE = "Run"
    POLL_S = 0.5  # one look (and at most one redraw) per this many seconds
    BINDINGS = [
        Binding("escape", "app.back", "Back", tooltip="Back to the screen before"),
        Binding("c", "cancel", "Cancel run", tooltip="Cancel this run (asks first): queued, it never starts; "
                "running, it saves a checkpoint and stops"),
        Binding("a", "show_tab('per_au')", "Per-AU F1", tooltip="Each AU's F1 over the epochs"),
        Binding("w", "wrap", "Wrap", tooltip="Wrap the log's long lines, or cut them at the edge (toggles)"),
        Binding("n", "edit_notes", "Notes", tooltip="Edit this run's notes (notes.md); ctrl+s saves"),
        Binding("r", "refresh", "Refresh", show=False, tooltip="Look at the run folder again now"),
        Binding("b", "colouring", "Colouring", show=False, tooltip="The feature scatter's colouring: by subject, "
                "then by each AU's presence (cycles)"),
        Binding("D", "config_diff", "Config diff", show=False, tooltip="The config keys in which this run differs "
                "from another (chosen from a list, the run last compared with first), each value with its source"),
        Binding("p", "predict", "Predict", show=False, tooltip="Run this finished AU/FER model on your own video, "
                "image or folder (a queue job), or follow this prediction's per-face timeline"),
        *(Binding(TAB_TITLES[tab][0], f"show_tab('{tab}')", f"{TAB_TITLES[tab][2:]} tab", show=False, tooltip=what)
          for tab, what in TABS.items()),
    ]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.poller = RunPoller(self.path)
        self.updates = 0  # looks that changed something, applied (tests wait on it)
        self.polls = 0
        self._polling = False
        self._files: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        # Per-epoch series, rebuilt from nothing when metrics.jsonl is replaced. An IAT run's `loss` adds
        # the identity head's: its AU loss is drawn as a λ 0 run's, the identity loss beside it.
        self._train: dict[str, list[float]] = {"x": [], "loss": [], "lr_x": [], "lr": []}
        self._epoch_loss: dict[str, list[float]] = {"x": [], "loss": []}
        self._identity: dict[str, list[float]] = {"x": [], "loss": []}
        self._test: dict[str, dict[str, list[float]]] = {}
        self._test_records: list[dict[str, Any]] = []  # for the per-AU curves
        self._log_lines: list[str] = []  # kept to lay the log out again when wrapping is toggled
        self.wrap = True
        self._cancelled: Any = None  # a job whose cancel was sent, until its end is told

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="run-head")
        with TabbedContent(id="run-tabs"):
            with TabPane(TAB_TITLES["curves"], id="curves"):
                with Horizontal():
                    with Vertical(id="curves-left"):
                        yield CurvePlot("train loss", id="plot-loss")
                        yield CurvePlot("lr", id="plot-lr")
                    yield CurvePlot("test score", id="plot-score")
            with TabPane(TAB_TITLES["scores"], id="scores"):
                yield Static(id="scores-caption")
                yield ScoresTable(id="scores-table")
            with TabPane(TAB_TITLES["log"], id="log"):
                yield RichLog(max_lines=LOG_LINES, wrap=True, markup=False, highlight=False, id="log-view")
            with TabPane(TAB_TITLES["config"], id="config"):
                with VerticalScroll(id="config-scroll"):
                    yield Static(id="config-body")
            with TabPane(TAB_TITLES["notes"], id="notes"):
                with VerticalScroll(id="notes-scroll"):
                    yield Static(id="notes-body")
                yield NotesEditor(id="notes-editor", classes="-hidden")
            with TabPane(TAB_TITLES["per_au"], id="per_au"):
                with VerticalScroll(id="per-au-scroll"):
                    yield Static(id="per-au-body")
            with TabPane(TAB_TITLES["features"], id="features"):
                yield FeatureScatter(self.path, id="feature-plot")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = f"Run {self.path.name}"
        self._show_head()
        self._poll_timer = self.set_interval(self.POLL_S, self._tick, pause=True)
        self._head_timer = self.set_interval(5.0, self._show_head, pause=True)  # "heartbeat 12s ago" ages

    def on_screen_resume(self) -> None:
        self._tick()
        self._poll_timer.resume()
        self._head_timer.resume()

    def on_screen_suspend(self) -> None:
        self._poll_timer.pause()
        self._head_timer.pause()

    # --- the worker -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self._polling:
            self._polling = True
            self._poll()

    class Polled(WorkEnded):
        """A look at the run folder ended: `result` is the RunUpdate."""

    def _poll(self) -> None:
        # every exception here is a bug (the poller says unreadable files itself): said with its type
        self.in_thread(self.poller.poll, self.Polled, group="run-poll", plain=())

    def on_run_screen_polled(self, message: Polled) -> None:
        update: RunUpdate | None = message.result
        error = message.error
        self._polling = False
        self.polls += 1
        if error is not None:
            self.notify(error, title="reading the run", severity="error", markup=False)
        if not update:
            return
        for name, problem in update.errors.items():
            if self._errors.get(name) != problem:
                self.notify(problem, title=f"{name} unreadable", severity="warning", markup=False)
        self._errors.update(update.errors)
        for name in update.files:
            self._errors.pop(name, None)
        self._files.update(update.files)
        if update.records or update.metrics_reset:
            self._add_records(update.records, update.metrics_reset)
        if update.log_lines or update.log_reset:
            log = self.query_one("#log-view", RichLog)
            if update.log_reset:
                log.clear()
                self._log_lines.clear()
            self._log_lines = (self._log_lines + update.log_lines)[-LOG_LINES:]
            for line in update.log_lines[-LOG_LINES:]:
                log.write(Text(line), scroll_end=True)
        if "run.toml" in update.files or "run.toml" in update.errors:
            self._show_config()
        if "summary.json" in update.files:
            self._show_scores()
        if "notes.md" in update.files and self.query_one(NotesEditor).has_class("-hidden"):
            self._show_notes()
        if update.files.keys() & {"status.json", "summary.json", "run.toml", "tags"} or update.errors:
            self._show_head()
        if self._cancelled is not None and (update.files.get("status.json") or {}).get("state") in FINAL_STATES:
            from fmae.queue_ops import cancel_outcome

            outcome = cancel_outcome(self._cancelled)
            if outcome is not None:
                self.notify(outcome, title="cancel", markup=False)
                self._cancelled = None
        self.updates += 1

    # --- curves -------------------------------------------------------------------------------------

    def _add_records(self, records: list[dict[str, Any]], reset: bool) -> None:
        if reset:
            for series in (self._train, self._epoch_loss, self._identity):
                for values in series.values():
                    values.clear()
            self._test.clear()
            self._test_records.clear()
        for rec in records:
            split, epoch = rec.get("split"), _number(rec.get("epoch"))
            if split == "train":
                x = _number(rec.get("epoch_frac"))
                x = x if x is not None else epoch
                loss, lr = _number(au_loss(rec)[1]), _number(rec.get("lr"))
                for series, value in ((self._train, loss), (self._identity, _number(rec.get("loss_id")))):
                    if x is not None and value is not None:
                        series["x"].append(x)
                        series["loss"].append(value)
                if x is not None and lr is not None:
                    self._train["lr_x"].append(x)
                    self._train["lr"].append(lr)
            elif split == "train_epoch" and epoch is not None and _number(rec.get("loss")) is not None:
                self._epoch_loss["x"].append(epoch)
                self._epoch_loss["loss"].append(_number(au_loss(rec)[1]))
            elif split == "test" and epoch is not None:
                self._test_records.append(rec)
                for key, label in ((m.key, m.short) for m in (F1_05, F1_BEST, ACCURACY)):
                    value = _number(rec.get(key))
                    if value is not None:
                        xs_ys = self._test.setdefault(label, {"x": [], "y": []})
                        xs_ys["x"].append(epoch)
                        xs_ys["y"].append(value)
        self._replot()
        self._show_per_au()

    def _show_per_au(self) -> None:
        body = self.query_one("#per-au-body", Static)
        body.update(per_au_table(self._test_records, self.app.size.width))

    def _replot(self) -> None:
        loss = self.query_one("#plot-loss", CurvePlot)
        loss.clear_series()
        loss.set_series("steps", self._train["x"], self._train["loss"])
        if self._epoch_loss["x"]:
            loss.set_series("epoch mean", self._epoch_loss["x"], self._epoch_loss["loss"])
        if self._identity["x"]:
            loss.set_series("identity head", self._identity["x"], self._identity["loss"])
        loss.title = "train AU loss" if self._identity["x"] else "train loss"
        loss.replot()
        lr = self.query_one("#plot-lr", CurvePlot)
        lr.set_series("lr", self._train["lr_x"], self._train["lr"])
        lr.replot()
        score = self.query_one("#plot-score", CurvePlot)
        score.clear_series()
        for label, xs_ys in self._test.items():
            score.set_series(label, xs_ys["x"], xs_ys["y"])
        score.title = "test accuracy" if list(self._test) == ["acc"] else "test F1 (mean over AUs)"
        score.replot()

    # --- the other panes ----------------------------------------------------------------------------

    def _show_head(self) -> None:
        status = self._files.get("status.json") or {}
        config, _ = self._files.get("run.toml") or ({}, {})
        summary = as_summary(self._files.get("summary.json"))
        state = status.get("state") if status.get("state") in STATES else "corrupt"
        if "status.json" not in self._files and "status.json" not in self._errors:
            state = "…"  # not looked yet
        text = Text(state, STATE_STYLE.get(state, "") or "bold")  # the run id is in the header
        tags = self._files.get("tags") or []
        if tags:
            text.append(" · tags " + " ".join(tags))
        what = [kind_label(config, wide=True)] if config else []
        if config.get("dataset") is not None:
            what.append(str(config["dataset"]))
        # A fold and λ only where they mean something: AU work (not pretraining, FER or a probe).
        keys = (("fold", "fold "), ("seed", "seed "), ("lambda_id", "λ ")) if config.get("task") == "au" else (("seed", "seed "),)
        for key, label in keys:
            if config.get(key) is not None:
                what.append(f"{label}{_value_text(config[key])}")
        if config.get("model"):
            what.append(str(config["model"]))
        if config.get("source_run"):
            what.append(f"of {config['source_run']}")
        epoch, epochs = status.get("epoch"), status.get("epochs") or config.get("epochs")
        if epoch is not None or epochs:
            what.append(f"epoch {epoch or 0}/{epochs or '?'}")
        step, total = status.get("step"), status.get("total_steps")
        if isinstance(step, int) and isinstance(total, int) and total and (state == "running" or step < total):
            what.append(f"step {step}/{total} ({100 * step // total}%)")
        if state == "running" and parse_utc(status.get("heartbeat")) is not None:
            what.append(f"heartbeat {ago(time.time() - parse_utc(status['heartbeat']))} ago")
        text.append("\n" + " · ".join(what))
        best = summary.best_value
        best_epoch = summary.best_epoch if summary.best_epoch is not None else "?"
        last_value, last_epoch = headline_at(summary)
        if best is None and last_value is not None:  # pretraining: no best epoch, its last epoch's loss
            text.append(f"\n{METRIC_LONG.get(str(summary.metric), summary.metric)} {last_value:.4f} "
                        f"at epoch {last_epoch} (the last)")
        if best is not None:
            metric = str(summary.metric)
            label = METRIC_LONG.get(metric, metric)
            if config.get("eval_checkpoint"):
                text.append(f"\n{label} {best:.3f} (the epoch-{best_epoch} checkpoint)")
            else:
                text.append(f"\nbest {label} {best:.3f} at epoch {best_epoch}")
            last_record = summary.last or {}
            last = _number(last_record.get(metric))
            if last is not None and last_record.get("epoch") != summary.best_epoch:
                text.append(f" · last {last:.3f} (epoch {last_record.get('epoch', '?')})")
            if trivial := beside_all_positive(summary):
                text.append("\n" + trivial)
        if is_degenerate(summary):
            text.append("\n" + degenerate_text(summary), "bold red")
        if error := status.get("error"):  # "cancelled (SIGTERM) …" already names its state
            text.append(f"\n{error}" if str(error).startswith(state) else f"\n{state}: {error}", "red")
        for name, problem in self._errors.items():
            text.append(f"\n{problem}", "red")
        self.query_one("#run-head", Static).update(text)

    def _show_scores(self) -> None:
        summary = as_summary(self._files.get("summary.json"))
        best = summary.best
        table = self.query_one(ScoresTable)
        table.show(best)
        caption = Text()
        config, _ = self._files.get("run.toml") or ({}, {})
        if config.get("task") == "pretrain":
            caption.append("pretraining has no test split: ", "bold")
            value, epoch = headline_at(summary)
            if value is not None:
                caption.append(f"its number is the {short_metric(summary)} ({value:.4f}, epoch {epoch}); ")
            caption.append("each epoch's reconstructions are in predictions/, the encoder in "
                           "checkpoints/pretrained.pth")
        elif best is None:
            caption.append("no evaluation yet (summary.json appears after the first test epoch)")
        else:
            caption.append(f"best epoch {summary.best_epoch if summary.best_epoch is not None else best.get('epoch', '?')}",
                           "bold")
            if summary.epochs_done is not None:
                caption.append(f" of {summary.epochs_done} evaluated")
            threshold = _number(best.get("best_threshold"))
            if threshold is not None:
                caption.append(f" · best threshold {threshold:g}")
            if is_degenerate(summary):  # the head says why; 80×24 must still show every AU's row
                caption.append(" ⚠ degenerate", "bold red")
            if summary.metric_label:  # the catalogue's short words: the trainer's own take two lines at 80
                caption.append(f"\nselected by {METRIC_LONG.get(str(summary.metric), summary.metric_label)}", "dim")
        self.query_one("#scores-caption", Static).update(caption)

    def _show_config(self) -> None:
        body = self.query_one("#config-body", Static)
        if "run.toml" in self._errors:
            body.update(Text(self._errors["run.toml"], "red"))
            return
        config, provenance = self._files.get("run.toml") or ({}, {})
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        rows = [(Text("[config]", "dim"), ""), *((key, _value_text(value)) for key, value in config.items()),
                ("", ""), (Text("[provenance]", "dim"), ""),
                *((key, _value_text(provenance[key])) for key in PROVENANCE_KEYS if key in provenance)]
        set_by = provenance.get("set_by")
        if isinstance(set_by, dict) and set_by:
            rows.append(("set by", Text(", ".join(f"{k}: {v}" for k, v in set_by.items()))))
        for row in rows:
            grid.add_row(*row)
        body.update(grid)

    def _show_notes(self) -> None:
        notes = self._files.get("notes.md") or ""
        self.query_one("#notes-body", Static).update(
            Text(notes) if notes.strip() else Text("no notes yet: n to write some", "dim"))

    # --- actions --------------------------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        target = {"scores": "#scores-table", "log": "#log-view", "config": "#config-scroll",
                  "notes": "#notes-scroll"}.get(tab)
        if target is not None:  # arrows and page keys then move what the tab shows
            self.query_one(target).focus()

    def action_refresh(self) -> None:
        self._tick()

    def action_predict(self) -> None:
        from fmae_tui.screens.predict import PredictScreen

        config, _ = self._files.get("run.toml") or ({}, {})
        state = (self._files.get("status.json") or {}).get("state")
        if config.get("task") != "predict" and (config.get("task") not in ("au", "fer") or state != "done"):
            self.notify("Predict needs a finished AU or FER run (or a prediction run to follow)", severity="warning")
            return
        self.app.push_screen(PredictScreen(self.path))

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "features":  # `fmae features` may have run since: read the newest points
            self.query_one(FeatureScatter).look()

    def action_colouring(self) -> None:
        self.query_one(TabbedContent).active = "features"
        self.notify(f"features coloured by {self.query_one(FeatureScatter).next_colouring()}", markup=False)

    def action_config_diff(self) -> None:
        """Against a run chosen from a list, on the Compare screen's config tab."""
        from fmae_tui.screens.compare import CompareScreen
        from fmae_tui.screens.run_chooser import RunChooser

        def chosen(other: Path | None) -> None:
            if other is not None:
                self.app.push_screen(CompareScreen([self.path, other], tab="config"))

        self.app.push_screen(RunChooser(self.path, self.fmae.compared.get(self.path),
                                        f"config diff: {self.path.name} against…"), chosen)

    def action_wrap(self) -> None:
        """Lay the log out again, wrapped at the edge or cut there."""
        log = self.query_one("#log-view", RichLog)
        self.wrap = log.wrap = not log.wrap
        log.clear()
        for line in self._log_lines:
            log.write(Text(line), scroll_end=True)
        self.action_show_tab("log")
        self.call_after_refresh(log.scroll_end, animate=False)  # once the new layout is measured
        self.notify("log lines wrap" if self.wrap else "log lines are cut at the edge (w: wrap)")

    def action_cancel(self) -> None:
        """Through the queue, as the Queue screen cancels (asks first)."""
        from fmae.queue import DB_NAME, Queue

        status = self._files.get("status.json") or {}
        job = None
        try:
            if (self.path.parent / DB_NAME).exists():
                q = Queue(self.path.parent)
                job = q.get_run(self.path.name)
            if job is None:
                pid = status.get("pid")
                how = (f"stop it where it runs (ctrl+c, or kill -TERM {pid})" if status.get("state") == "running"
                       and pid else "only queued or running queue jobs can be cancelled")
                self.notify(f"{self.path.name} is not a queue job (started by `fmae train`?): {how}",
                            severity="warning", markup=False)
                return
        except FmaeError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.confirm_cancel(job, lambda: self._cancel(q, job))

    def _cancel(self, q: Any, job: Any) -> None:
        from fmae.queue_ops import cancel_job

        try:
            message = cancel_job(q, job)
        except FmaeError as e:
            self.notify(str(e), title="cancel", severity="error", markup=False, timeout=10)
            return
        self.notify(message, title="cancel", markup=False)
        if job.state != "queued" and "finished before" not in message:
            self._cancelled = job  # the look that sees it end says how: cancelled, or done anyway
        self._tick()

    def action_edit_notes(self) -> None:
        self.query_one(TabbedContent).active = "notes"
        editor = self.query_one(NotesEditor)
        editor.remove_class("-hidden")
        self.query_one("#notes-scroll").add_class("-hidden")
        editor.start(self.poller.run.read_notes() if self.poller.run.notes_path.exists() else "")

    def on_notes_editor_submitted(self, event: NotesEditor.Submitted) -> None:
        try:
            self.poller.run.write_notes(event.text)
        except (OSError, FmaeError) as e:
            self.notify(f"{self.poller.run.notes_path}: {e}", title="notes not saved", severity="error",
                        markup=False)
            return
        self._files["notes.md"] = event.text
        self.notify(f"notes saved to {self.poller.run.notes_path.name}", markup=False)
        self._close_editor()

    def on_notes_editor_closed(self, event: NotesEditor.Closed) -> None:
        self._close_editor()

    def _close_editor(self) -> None:
        self.query_one(NotesEditor).add_class("-hidden")
        self.query_one("#notes-scroll").remove_class("-hidden")
        self._show_notes()
        self.query_one("#run-tabs").focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While the editor is open, n and digits are text, not keys for this screen.
        if action in ("edit_notes", "show_tab", "cancel", "wrap", "config_diff", "colouring"):
            editors = self.query(NotesEditor)
            return not (editors and not editors.first().has_class("-hidden"))
        return True
