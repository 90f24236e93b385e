"""What a researcher tripped on walking a whole study through the app at 80×24 (issue 15's walk), each
asserted as the screen shows it. Run folders are built by hand: no training."""

from __future__ import annotations

from pathlib import Path

from fmae.runs import RunDir, make_run_id
from fmae_tui.app import create_app
from fmae_tui.screens.run import RunScreen
from tui_support import open_launch, screen_text, tiny_project, wait_until

CONFIG = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 0.0, "model": "vit_tiny",
          "recipe": "demo", "epochs": 2}


def _run(root: Path, seed: int) -> RunDir:
    run_id = make_run_id("bp4d", "vit_tiny", seed, fold=1, lambda_id=0.0)
    run = RunDir.create(root, run_id, {**CONFIG, "seed": seed}, {"command": ["fmae", "train"]})
    run.mark_running(pid=1, host="here")
    return run


async def _head(app, run: RunDir) -> str:
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.push_screen(RunScreen(run.path))
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.updates > 0)
        await pilot.pause()
        return screen_text(app)


async def test_run_head_sets_f1_at_half_beside_the_all_positive_f1(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs", 0)
    best = {"split": "test", "epoch": 2, "f1_05_mean": 0.551, "f1_best_mean": 0.602, "best_threshold": 0.3,
            "auc_mean": 0.744}
    run.write_summary({"task": "au", "metric": "f1_best_mean", "epochs": 2, "epochs_done": 2, "best_epoch": 2,
                       "best_value": 0.602, "best": best, "last": best, "f1_all_positive_mean": 0.499})
    run.mark_ended("done", exit_code=0)
    text = await _head(create_app(runs_dir=tmp_path / "runs"), run)
    assert "best F1 best-thr (tuned on test) 0.602 at epoch 2" in text
    assert "F1@0.5 0.551 vs all-positive F1 0.499 · AUC 0.744" in text


async def test_a_cancelled_run_says_cancelled_once(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs", 1)
    run.mark_ended("cancelled", exit_code=3, error="cancelled (SIGTERM); resume continues from epoch 1, step 13")
    text = await _head(create_app(runs_dir=tmp_path / "runs"), run)
    assert "cancelled (SIGTERM); resume continues from epoch 1, step 13" in text
    assert "cancelled: cancelled" not in text


async def test_launch_plans_again_on_return_so_a_skipped_run_shows_its_state_now(tmp_path: Path) -> None:
    """Back on Launch after watching the queue, the plan's skip lines say what the runs are doing now,
    not what they were when the plan was first drawn."""
    from fmae.config import load_project
    from fmae.queue_ops import plan_matrix

    config = tiny_project(tmp_path)
    app = create_app(config, tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        launch = await open_launch(pilot)
        cell = plan_matrix(load_project(config, tmp_path / "runs"), **launch.matrix()).to_add[0]
        run = RunDir.create(tmp_path / "runs", make_run_id("bp4d", str(cell.values["model"]), 0, fold=1,
                                                           lambda_id=0.0), cell.values, {})
        await pilot.press("j")
        run.mark_running(pid=1, host="here")
        previews = launch.previews
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is launch and launch.previews > previews, what="plan again")
        await pilot.pause()
        assert f"{run.id} (running)" in screen_text(app).replace("\n ", "")



def test_results_note_names_the_apps_group_by_key(tmp_path: Path) -> None:
    """A group whose runs differ in epochs: the note the Results screen shows (n) tells the app's key (k),
    not the CLI's --by flag, which the screen has no place to type. The report and the screen's own
    wording, without the app: the suite's time is spent elsewhere."""
    import random

    from fmae.registry import get_dataset
    from fmae.report import build
    from fmae_tui.results_text import note_text
    from test_report import au_config, au_record, new_run, rand_values

    aus, rng, runs = get_dataset("bp4d").au_names(), random.Random(1), tmp_path / "runs"
    for fold, epochs in ((1, 2), (2, 10)):
        values = [rand_values(rng, aus) for _ in range(3)]
        new_run(runs, au_config(fold, 0, recipe="demo", epochs=epochs), "done",
                {"task": "au", "best_epoch": 2, "best": au_record(2, *values), "last": au_record(2, *values)})
    notes = [note_text(n) for r in build(runs).reports for n in r.notes()]
    assert "vit_tiny demo λ=0: its runs differ in epochs; each cell counts its newest run " \
           "(k: group by epochs separates them)" in notes


async def test_launch_reopens_the_last_plan_after_a_restart(tmp_path: Path) -> None:
    """The plan a researcher left in Launch (the demo recipe, vit_tiny, folds 1,2, λ 0,2) is the plan the
    next start of the app shows, not the recipe's defaults (mount's own recipe change used to refill
    every field after the plan was restored, and the preview then saved the defaults over it)."""
    from textual.widgets import Input, Select

    config = tiny_project(tmp_path)
    plan = {"#model": "vit_tiny", "#epochs": "2", "#folds": "1,2", "#seeds": "0", "#lambdas": "0,2"}
    for visit in ("set", "restored"):
        app = create_app(config, tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            launch = await open_launch(pilot)
            if visit == "set":
                launch.query_one("#recipe", Select).value = "demo"
                await wait_until(pilot, lambda: launch.query_one("#epochs", Input).value == "10", what="demo fill")
                for selector, value in plan.items():
                    launch._set(selector, value)
                previews = launch.previews
                await wait_until(pilot, lambda: launch.previews > previews and launch.plan is not None)
            await pilot.pause(0.3)
            assert {s: str(launch.query_one(s).value) for s in plan} == plan, visit
            assert "folds 1,2 × seeds 0 × λ 0,2 = 4 cell(s)" in screen_text(app)
