"""Compare, config diffs and run notifications in the app, at 80×24: run folders made by the engine's
own path (`expand_matrix` + `create_run`, so run.toml records real sources), given the metrics and
summaries the Runs tests' fixture writes (tests/test_tui_runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.message import Message
from textual.notifications import Notify
from textual.widgets import OptionList, TabbedContent

from fmae.config import load_project, parse_project
from fmae.errors import FmaeError
from fmae.experiments import expand_matrix
from fmae.run_config import create_run
from fmae.report import GroupRow
from fmae.report.compare import compare_rows
from fmae.runs import RunDir
from fmae_tui.app import FmaeApp, create_app
from fmae_tui.screens.compare import CompareScreen
from fmae_tui.screens.run import RunScreen
from fmae_tui.screens.run_chooser import RunChooser
from fmae_tui.screens.results import ResultsScreen
from fmae_tui.screens.runs import RunsScreen
from fmae_tui.widgets.compare_table import CompareTable
from fmae_tui.widgets.curve_plot import CurvePlot
from fmae_tui.widgets.feature_scatter import FeatureScatter
from test_compare import BASE, IAT, new_run
from test_tui_runs import _au_summary, _test_record, _train_records, open_runs
from tui_support import screen_text, squash, wait_until


def make_run(root: Path, lam: float, state: str = "done", epochs: int = 4, shift: float = 0.0, **cli) -> RunDir:
    """A bp4d fold-1 vit_tiny run at λ = lam, trained `epochs` epochs (train and test records each epoch,
    the best epoch's summary), then ended in `state`."""
    project = load_project(runs_dir=root, cwd=root.parent)
    [cell] = expand_matrix(project, "bp4d", folds=[1], seeds=[0], lambdas=[lam], recipe=None,
                           cli={"model": "vit_tiny", "epochs": 4, **cli}, generate=False)
    run = create_run(root, cell)
    run.mark_running(pid=1, host="gpu-node-3", gpus="0")
    for epoch in range(1, epochs + 1):
        _train_records(run, epoch)
        run.append_metrics(_test_record(epoch, shift + 0.05 * (epochs - epoch)))
    if epochs:
        _au_summary(run, epochs, epochs, shift)
    if state != "running":
        run.mark_ended(state, exit_code=0 if state == "done" else 1)
    return run


@pytest.fixture
def pair(tmp_path: Path) -> tuple[RunDir, RunDir]:
    """λ 0 at the recipe's blr; λ 2 at blr 0.001 from the command line, 0.05 better on every AU."""
    root = tmp_path / "runs"
    return make_run(root, 0.0, shift=0.05), make_run(root, 2.0, blr=0.001)


def said(seen: list[Message]) -> list[str]:
    return [m.notification.message for m in seen if isinstance(m, Notify)]


async def mark(pilot, table, *runs: RunDir) -> None:
    for run in runs:
        table.move_cursor(row=table.get_row_index(run.id))
        await pilot.press("space")


async def test_compare_overlays_curves_tables_and_config_at_80x24(pair, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CompareScreen, "POLL_S", 0.05)
    low, high = pair
    seen: list[Message] = []
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        table = await open_runs(app, pilot)
        await pilot.press("c")  # nothing marked: it says what to do
        assert isinstance(app.screen, RunsScreen)
        assert said(seen)[-1].startswith("mark two or more runs with space")
        await mark(pilot, table, low, high)
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await wait_until(pilot, lambda: screen.polls > 0 and screen.query_one("#cmp-loss", CurvePlot).points,
                         what="the runs' curves")
        await pilot.pause()
        text = screen_text(app)
        # one legend above both plots: each run's mark and letter and what tells it apart (λ)
        assert "⣿ A λ0   x B λ2" in text
        legend, loss, score = (screen.query_one(s) for s in ("#compare-legend", "#cmp-loss", "#cmp-score"))
        assert legend.region.bottom <= loss.region.y and loss.legend == score.legend == ""
        assert {name: len(xs) for name, (xs, _) in loss.series.items()} == {"A": 16, "B": 16}
        assert score.series["B"][1][-1] == pytest.approx(_test_record(4)["f1_05_mean"])
        assert "test F1@0.5" in text
        await pilot.press("m")  # the plotted score: the test-tuned F1, labelled so
        assert score.title == "test F1 best-thr (tuned on test)"
        assert score.series["A"][1][-1] == pytest.approx(_test_record(4, 0.05)["f1_best_mean"])

        await pilot.press("2")  # per-AU tables side by side; B is better everywhere: its cells bold
        grid = screen.query_one(CompareTable)
        assert str(grid.get_cell("AU1", "0:f1_05")) == "0.360" and str(grid.get_cell("AU1", "1:f1_05")) == "0.410"
        assert grid.get_cell("AU4", "1:auc").style == "bold" and grid.get_cell("AU4", "0:f1_best").style == ""
        assert str(grid.get_cell("epoch", "0:f1_05")) == "4"
        text = screen_text(app)
        assert "F1 best-thr (tuned on test): each run's threshold chosen on its own test fold" in text

        await pilot.press("D")  # the config diff: only what differs, with run.toml's sources
        await wait_until(pilot, lambda: screen._diffed, what="the config diff")
        await pilot.pause()
        text = screen_text(app)
        assert "2 key(s) differ" in text
        lines = [line.split() for line in text.splitlines()]
        leaf = lambda words: words[0].rsplit(".", 1)[-1] if words else ""  # noqa: E731 (optim.blr or blr)
        blr = next(i for i, words in enumerate(lines) if leaf(words) == "blr")
        assert lines[blr][1:] == ["0.0002", "0.001"]
        assert lines[blr + 1] == ["recipe", "bp4d/fmae", "command", "line"]
        assert any(leaf(words) == "lambda_id" and words[1:] == ["0", "2"] for words in lines)
        assert not any(leaf(words) == "epochs" for words in lines)  # the same on both: not shown

        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("D")  # Runs' D: the marked runs straight on the config diff
        assert isinstance(app.screen, CompareScreen) and app.screen.query_one(TabbedContent).active == "config"
        await pilot.press("escape")

        # The Run screen's D: a chooser, the run last compared with first; the diff as Compare shows it
        table.move_cursor(row=table.get_row_index(high.id))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("D")
        await wait_until(pilot, lambda: isinstance(app.screen, RunChooser)
                         and app.screen.query_one(OptionList).option_count > 0, what="the chooser")
        assert f"{low.id}  done  · compared last" in screen_text(app)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen._diffed,
                         what="the diff against the chosen run")
        await pilot.pause()
        assert [t.path for t in app.screen.tracks] == [high.path, low.path]
        assert any(words and words[0].endswith("blr") and words[1:] == ["0.001", "0.0002"]
                   for words in (line.split() for line in screen_text(app).splitlines()))


async def test_three_runs_side_by_side_scroll_and_say_what_is_missing(pair, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CompareScreen, "POLL_S", 0.05)
    fresh = make_run(tmp_path / "runs", 0.5, state="running", epochs=0)
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        app.push_screen(CompareScreen([*(r.path for r in pair), fresh.path], tab="scores"))
        screen = app.screen
        await wait_until(pilot, lambda: screen.polls > 0 and screen.query_one(CompareTable).row_count, what="tables")
        await pilot.pause()
        text = screen_text(app)
        assert "+ C λ0.5 (running)" in text  # its own mark and colour; not yet done
        assert "no evaluation yet: C" in text
        grid = screen.query_one(CompareTable)
        assert str(grid.get_cell("AU1", "2:f1_05")) == "-"
        assert grid.max_scroll_x > 0  # three runs × three scores are wider than 80 columns: the table scrolls
        before = grid.scroll_x
        grid.focus()
        await pilot.press("right", "right", "right", "right")
        assert grid.scroll_x > before

        # FER runs: accuracy plotted without pressing m, per-class recall side by side
        fer = []
        for seed, acc in ((0, 0.61), (1, 0.66)):
            run = RunDir.create(tmp_path / "runs", f"fer-{seed}", {"task": "fer", "dataset": "rafdb", "seed": seed}, {})
            record = {"split": "test", "epoch": 1, "accuracy": acc, "mean_class_recall": acc - 0.1,
                      "per_class_recall": {"Happiness": acc + 0.2, "Fear": acc - 0.3}}
            run.append_metrics(record)
            run.write_summary({"metric": "accuracy", "best_value": acc, "best_epoch": 1, "best": record})
            fer.append(run.path)
        app.push_screen(CompareScreen(fer, tab="scores"))
        screen = app.screen
        await wait_until(pilot, lambda: screen.polls > 0 and screen.query_one(CompareTable).row_count, what="FER")
        assert screen.score.key == "accuracy" and screen.query_one("#cmp-score", CurvePlot).title == "test accuracy"
        grid = screen.query_one(CompareTable)
        assert str(grid.get_cell("Fear", "1:per_class_recall")) == "0.360"
        assert str(grid.get_cell("accuracy", "0:per_class_recall")) == "0.610"


async def test_a_lambda_run_plots_its_au_loss_not_the_total_with_the_identity_term(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer logs `loss` = AU BCE + the identity term for λ > 0, and `loss_au` alone (λ 0 too):
    Compare overlays `loss_au`, so λ 0 and λ 2 are one quantity, and its title says the term is out."""
    from fmae_tui.screens.compare import Track, loss_label

    monkeypatch.setattr(CompareScreen, "POLL_S", 0.05)
    root = tmp_path / "runs"
    zero, two = make_run(root, 0.0, epochs=0), make_run(root, 2.0, epochs=0, blr=0.001)
    for k in range(4):  # as fmae/train/tasks.py AUTask.loss and the trainer's train records write them
        au = 0.7 - 0.05 * k
        zero.append_metrics({"split": "train", "epoch": 1, "step": k + 1, "epoch_frac": (k + 1) / 4, "loss": au,
                             "loss_au": au})
        two.append_metrics({"split": "train", "epoch": 1, "step": k + 1, "epoch_frac": (k + 1) / 4,
                            "loss": au + 0.9, "loss_au": au, "loss_id": 0.9, "id_acc": 0.1})
    app = create_app(runs_dir=root)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        app.push_screen(CompareScreen([zero.path, two.path]))
        screen = app.screen
        await wait_until(pilot, lambda: screen.polls > 0 and screen.query_one("#cmp-loss", CurvePlot).points,
                         what="the loss curves")
        loss = screen.query_one("#cmp-loss", CurvePlot)
        await pilot.pause()
        assert loss.series["B"][1] == loss.series["A"][1] == pytest.approx([0.7, 0.65, 0.6, 0.55])
        text = screen_text(app)
        assert loss.title == "train AU loss" and "train AU loss" in text  # short enough for plotext to keep
        assert squash("train AU loss: the AU BCE alone, λ's identity-adversarial term left out") in squash(text)
    # A run that logged no AU loss of its own (only the total, beside an identity term): the note names it.
    old = Track(two.path, None)
    old.add([{"split": "train", "epoch": 1, "loss": 1.6, "loss_id": 0.9}], reset=False)
    assert old.loss == ([1.0], [1.6])
    assert loss_label(["A", "B"], [Track(zero.path, None), old]) == (
        "train loss", "train loss of B: AU + λ's identity term (no AU loss logged alone), not comparable with the others'")


async def test_runs_that_end_are_told_with_the_bell_if_configured(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FmaeApp, "ALERTS_S", 0.05)
    root = tmp_path / "runs"
    old = make_run(root, 0.0)  # ended before the app opened: not news
    ok, nan, oom, stopped = (make_run(root, lam, state="running", epochs=1) for lam in (0.5, 1.0, 2.0, 3.0))
    config = tmp_path / "fmae.toml"
    config.write_text("[app]\nbell = true\n", encoding="utf-8")
    seen: list[Message] = []
    app = create_app(config=config, runs_dir=root)
    rings = []
    monkeypatch.setattr(app, "bell", lambda: rings.append(1))
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await open_runs(app, pilot)
        app.action_open("results")  # whatever screen is on top
        await pilot.pause(0.3)
        ok.mark_ended("done", exit_code=0)
        nan.mark_ended("failed", exit_code=1, error="loss is nan at epoch 2, step 7 — lower blr (--set blr=…) "
                                                    "or check the data")
        oom.mark_ended("failed", exit_code=1, error="CUDA out of memory")
        stopped.mark_ended("cancelled", exit_code=0)  # the user asked for it: no toast
        toasts = lambda: [m.notification for m in seen if isinstance(m, Notify)  # noqa: E731
                          and m.notification.title in ("run done", "run failed", "non-finite loss")]
        await wait_until(pilot, lambda: len(toasts()) >= 3, what="three toasts")
        await pilot.pause(0.3)
        told = {t.message.split("\n")[0]: (t.title, t.severity, t.message.split("\n")[1]) for t in toasts()}
        best = f"F1 best-thr (tuned on test) {_test_record(1)['f1_best_mean']:.3f} (best epoch 1)"
        assert told == {ok.id: ("run done", "information", best),
                        nan.id: ("non-finite loss", "error", nan.read_status()["error"]),
                        oom.id: ("run failed", "error", "CUDA out of memory")}
        assert old.id not in told and stopped.id not in told
        assert 1 <= len(rings) <= 3  # a ring for each look that told something


def test_the_bell_is_off_unless_fmae_toml_says_true(tmp_path: Path) -> None:
    assert parse_project("", "fmae.toml", tmp_path).bell is False
    assert parse_project("[app]\nbell = true\n", "fmae.toml", tmp_path).bell is True
    with pytest.raises(FmaeError, match=r"fmae.toml:2: app.bell must be true or false, got"):
        parse_project("[app]\nbell = 1\n", "fmae.toml", tmp_path)


async def test_pinned_baseline_delta_gains_its_95_interval(tmp_path: Path) -> None:
    """Constructed predictions (tests/test_compare.py): FMAE-IAT clearly better than FMAE on folds 1–3."""
    root = tmp_path / "runs"
    for fold in (1, 2, 3):
        new_run(root, fold, 0, 2.0, "fmae_iat", 1.4, fold)
        new_run(root, fold, 0, 0.0, "fmae", 0.9, 100 + fold)
    app = create_app(runs_dir=root)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        app.action_open("results")
        screen = app.screen
        await wait_until(pilot, lambda: isinstance(screen, ResultsScreen) and screen.builds > 0, what="the tables")
        rows = {row.label: key for key, row in screen._rows.items() if isinstance(row, GroupRow)}
        screen.table.move_cursor(row=screen.table.get_row_index(rows[BASE]))
        await pilot.press("b")
        await wait_until(pilot, lambda: screen.intervals.done, timeout=30, what="the intervals")
        await pilot.pause()
        report_rows = {row.label: row for row in screen.report.rows}
        expected = compare_rows(root, report_rows[IAT], report_rows[BASE], metric=screen.metric)
        avg = str(screen.table.get_cell(rows[IAT], "avg")).splitlines()
        assert avg[-1] == f"[{expected.low['avg']:+.1f}, {expected.high['avg']:+.1f}]"
        assert expected.low["avg"] > 0  # the clear difference: the interval excludes 0
        assert "[95% interval]" in str(screen.table.get_cell(rows[IAT], "group"))
        assert "95% interval of Δ, bootstrap over test subjects" in " ".join(screen_text(app).split())
        assert str(screen.table.get_cell(rows[BASE], "avg")).count("[") == 0  # the pinned row itself: none


async def test_run_screen_shows_the_feature_points_as_a_scatter(pair, tmp_path: Path) -> None:
    low, _ = pair
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(RunScreen(low.path))
        await pilot.pause()
        await pilot.press("7")
        scatter = app.screen.query_one(FeatureScatter)
        await wait_until(pilot, lambda: scatter.looked, what="the look for points")
        await pilot.pause()
        assert squash(f"no t-SNE points for this run yet: fmae features {low.path} writes them") in \
            squash(screen_text(app))  # the command to copy: the run's folder, wherever the app was started
        # what `fmae features RUN` writes beside its picture, RUN/features/tsne-subject.png
        (low.path / "features").mkdir()
        rows = ["x,y,subject,path,AU1,AU2"] + [f"{i % 5}.5,{i // 5}.25,F00{i % 3},F00{i % 3}/{i}.jpg,{i % 2},0"
                                               for i in range(12)]
        (low.path / "features" / "tsne-subject.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        await pilot.press("1", "7")  # back on the tab: it reads the newest points again
        await wait_until(pilot, lambda: scatter.points is not None, what="the points")
        assert len(scatter.points.xy) == 12 and scatter.points.aus["AU1"][:3] == [0, 1, 0]
        await pilot.pause()
        assert "t-SNE of 12 test frames' encoder features (tsne-subject.csv), coloured by subject (3)" in \
            " ".join(screen_text(app).split())
        await pilot.press("b")
        await pilot.pause()
        assert "coloured by AU1: · AU1 absent x present" in " ".join(screen_text(app).split())
