"""The Run screen, opened from the Runs screen over the hand-built run folders of test_tui_runs.py: the
per-AU scores, the config and log tabs, the metrics tail read by byte offset, notes, and an IAT run's
loss curves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual.message import Message
from textual.notifications import Notify

from fmae.runs import RunDir
from fmae_tui.app import create_app
from fmae_tui.screens.run import RunScreen
from fmae_tui.screens.runs import RunsScreen
from fmae_tui.widgets.curve_plot import CurvePlot
from fmae_tui.widgets.scores_table import ScoresTable
from test_tui_runs import (AUC, AUS, F1_05, F1_BEST, _mean, _test_record, _train_records, fast_polling,  # noqa: F401
                           open_runs, runs)
from tui_support import open_run, screen_text, wait_until


async def test_open_run_shows_per_au_scores_config_and_log(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await open_run(pilot, runs["done"].id)
        screen = app.screen
        assert screen.query_one("#plot-score", CurvePlot).points == 8  # 4 epochs × (F1@0.5, F1 best-thr)
        assert screen.query_one("#plot-loss", CurvePlot).points == 16

        await pilot.press("2")
        scores = screen.query_one(ScoresTable)
        for au in AUS:
            assert str(scores.get_cell(au, "f1_05")) == f"{F1_05[au]:.3f}"
            assert str(scores.get_cell(au, "f1_best")) == f"{F1_BEST[au]:.3f}"
            assert str(scores.get_cell(au, "auc")) == f"{AUC[au]:.3f}"
        assert str(scores.get_cell("mean", "f1_best")) == f"{_mean(F1_BEST):.3f}"
        text = screen_text(app)
        assert "AU    F1@0.5  F1 best-thr  AUC" in text and "best threshold 0.35" in text

        await pilot.press("3")
        text = screen_text(app)
        assert "log line 299" in text and "log line 0\n" not in text
        await pilot.press("4")
        text = screen_text(app)
        assert "blr" in text and "0.0005" in text and "vit_large" in text and "3f2a9c1" in text

        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_run_screen_tails_metrics_by_offset(runs: dict[str, RunDir], tmp_path: Path,
                                                  fast_polling: None) -> None:
    run = runs["running"]
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await open_run(pilot)  # the running run is first
        screen = app.screen
        assert screen.path == run.path
        tail = screen.poller.metrics
        loss, score = screen.query_one("#plot-loss", CurvePlot), screen.query_one("#plot-score", CurvePlot)
        assert (loss.points, score.points) == (4, 2)
        size, read = run.metrics_path.stat().st_size, tail.bytes_read
        assert tail.offset == size

        _train_records(run, 2)
        run.append_metrics(_test_record(2, 0.1))
        half = json.dumps({"split": "train", "epoch": 3, "epoch_frac": 2.1, "lr": 1e-4, "loss": 0.2})
        with open(run.metrics_path, "a", encoding="utf-8") as f:
            f.write(half[:20])  # a line still being written
        await wait_until(pilot, lambda: score.points == 4)
        assert loss.points == 8
        complete = run.metrics_path.stat().st_size - 20
        assert tail.offset == complete  # the unfinished line waits for its newline
        assert tail.bytes_read - read < complete - size + 40 * 20  # only the new bytes were read (20 per look)

        with open(run.metrics_path, "a", encoding="utf-8") as f:
            f.write(half[20:] + "\n")
        await wait_until(pilot, lambda: loss.points == 9)
        assert tail.offset == run.metrics_path.stat().st_size and tail.bad_lines == 0

        # A resumed run rewrites the file as a new one: the screen drops what it had.
        text = run.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
        (run.path / "metrics.tmp").write_text("".join(text[:4]), encoding="utf-8")
        os.replace(run.path / "metrics.tmp", run.metrics_path)
        await wait_until(pilot, lambda: loss.points == 4)
        assert tail.resets == 1 and score.points == 0

        run.heartbeat(epoch=3, step=300)  # status follows too
        await wait_until(pilot, lambda: "step 300/400 (75%)" in " ".join(screen_text(app).split()))


async def test_notes_are_saved_to_notes_md(runs: dict[str, RunDir], tmp_path: Path) -> None:
    seen: list[Message] = []
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await open_runs(app, pilot)
        await open_run(pilot)
        await pilot.press("n", *"lr? q", "enter", *"2e-4")
        assert isinstance(app.screen, RunScreen) and not runs["running"].notes_path.exists()  # q typed, not quit
        await pilot.press("ctrl+s")
        assert runs["running"].notes_path.read_text(encoding="utf-8") == "lr? q\n2e-4"
        assert any(isinstance(m, Notify) and m.notification.message == "notes saved to notes.md" for m in seen)
        assert "2e-4" in screen_text(app)

        await pilot.press("n", "x", "escape")  # unsaved: the first escape warns
        said = [m.notification for m in seen if isinstance(m, Notify)]
        assert said[-1].severity == "warning" and said[-1].message.startswith("unsaved notes")
        await pilot.press("escape")
        assert runs["running"].notes_path.read_text(encoding="utf-8") == "lr? q\n2e-4"
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)




async def test_an_iat_run_plots_its_au_loss_and_the_identity_heads_apart(runs: dict[str, RunDir],
                                                                         tmp_path: Path) -> None:
    # λ > 0: the trainer's `loss` is loss_au + loss_id; the curve a reader sets beside a λ 0 run's is loss_au.
    run = runs["done"]
    run.append_metrics({"split": "train", "epoch": 5, "epoch_frac": 4.5, "lr": 1e-4, "loss": 1.3, "loss_au": 0.6,
                        "loss_id": 0.7})
    run.append_metrics({"split": "train_epoch", "epoch": 5, "loss": 1.4, "loss_au": 0.65, "loss_id": 0.75})
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await open_run(pilot, run.id)
        loss = app.screen.query_one("#plot-loss", CurvePlot)
        assert loss.title == "train AU loss"
        assert loss.series["identity head"] == ([4.5], [0.7])
        assert loss.series["steps"][1][-1] == 0.6 and loss.series["epoch mean"][1] == [0.65]
        await pilot.pause()
        assert "train AU loss" in screen_text(app)
