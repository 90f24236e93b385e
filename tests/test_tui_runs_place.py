"""The Runs screen keeps the user's place, and says what kind of run each row is: the cursor follows its
run id through re-sorts and refreshes, Home/End/PgUp/PgDn move it, the sort is remembered across
restarts, each kind (AU fine-tune, FER, MAE pretraining, identity probe, eval) shows its own fields and
headline number, wide terminals get the recipe, duration and images/s, degenerate runs are flagged."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fmae.runs import RunDir, make_run_id
from fmae_tui.app import create_app
from fmae_tui.screens.run import RunScreen
from fmae_tui.screens.runs import RunsScreen
from test_tui_runs import _au_summary, _make, cell, open_runs, runs  # noqa: F401 (runs is a fixture)
from tui_support import open_run, screen_text, squash, wait_until


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunsScreen, "POLL_S", 0.05)
    monkeypatch.setattr(RunScreen, "POLL_S", 0.05)


def _stamp(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


async def test_cursor_follows_its_run_through_resorts_and_refreshes(runs: dict[str, RunDir], tmp_path: Path,
                                                                    fast: None) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        done = runs["done"]
        table.move_cursor(row=table.get_row_index(done.id))
        await pilot.pause()
        before = table.shown_ids.index(done.id)
        await pilot.press("S")  # oldest first: the rows move, the cursor stays on its run
        assert table.shown_ids.index(done.id) != before
        assert table.selected_id == done.id and table.cursor_row == table.get_row_index(done.id)
        # A refresh that moves rows (the failed run queued again, a new run above) keeps it there too.
        runs["failed"].mark_queued()
        new = _make(tmp_path / "runs", "bp4d", "vit_tiny", 7, 0, fold=1, lam=0.0)
        await wait_until(pilot, lambda: new.id in table.shown_ids and cell(table, runs["failed"], "state") == "queued")
        assert table.selected_id == done.id
        # A run above the cursor goes away: still on the same run.
        import shutil

        shutil.rmtree(runs["running"].path)
        await wait_until(pilot, lambda: runs["running"].id not in table.shown_ids)
        assert table.selected_id == done.id
        # What the line under the table shows and what ⏎ opens are that run.
        assert done.id in screen_text(app).split("─" * 20)[-1]
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.screen.path == done.path


@pytest.mark.parametrize("size", [(80, 24), (200, 30)])
async def test_home_end_and_page_keys_move_the_cursor(tmp_path: Path, size: tuple[int, int]) -> None:
    root = tmp_path / "runs"
    made = [_make(root, "bp4d", "vit_tiny", seed, 100 - seed, fold=1, lam=0.0) for seed in range(40)]
    app = create_app(runs_dir=root)
    async with app.run_test(size=size) as pilot:
        table = await open_runs(app, pilot)
        assert table.selected_id == made[-1].id  # newest first
        assert " s0 " not in screen_text(app)  # the oldest run is below the screen
        await pilot.press("end")
        assert table.selected_id == made[0].id and table.cursor_row == 39
        await pilot.pause()
        shown = screen_text(app)
        assert " s0 " in shown and made[0].id in shown.split("─" * 20)[-1]  # drawn, and named below
        await pilot.press("home")
        assert table.cursor_row == 0
        await pilot.press("pagedown")
        page = table.cursor_row
        assert page >= 8, page  # a screenful, not one row
        await pilot.press("pagedown")
        assert table.cursor_row == min(2 * page, 39)
        await pilot.pause()
        assert f" s{39 - table.cursor_row} " in screen_text(app)  # the page under the cursor is the one drawn
        await pilot.press("pageup", "pageup")
        assert table.cursor_row == 0


async def test_sort_is_remembered_after_a_restart(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        await pilot.press("s", "s", "s", "S")  # state, kind, dataset; then reversed
        assert table.sort_label == "dataset ↓"
        order = table.shown_ids
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        assert table.sort_label == "dataset ↓" and "sort dataset ↓" in screen_text(app)
        assert table.shown_ids == order
        assert [table.shown_ids.index(runs[k].id) for k in ("fer", "running")] == [0, 1]  # rafdb, disfa, bp4d…


def _kinds(root: Path) -> dict[str, RunDir]:
    """One finished run of each kind, with the files the trainer writes for it."""
    au = _make(root, "bp4d", "vit_tiny", 0, 50, fold=2, lam=2.0)
    _au_summary(au, 3, 4)

    def finished(run: RunDir, summary: dict, minutes: float = 2.0) -> RunDir:
        run.mark_running(pid=1, host="h")
        run.update_status(started=_stamp(minutes * 60 + 10), heartbeat=_stamp(10))
        run.write_summary(summary)
        run.mark_ended("done", exit_code=0)
        run.update_status(ended=_stamp(10))
        run.append_metrics({"split": "train", "epoch": 1, "step": 5, "loss": 0.5, "lr": 1e-4, "images_per_s": 412.3})
        return run

    def create(name: str, config: dict, minutes_ago: int) -> RunDir:
        when = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
        return RunDir.create(root, make_run_id(config["dataset"], "vit_tiny", 0, now=when, name=name or None),
                             {"model": "vit_tiny", "seed": 0, "fold": 0, "lambda_id": 0.0, "epochs": 5, **config}, {})

    pre = finished(create("pretrain", {"task": "pretrain", "dataset": "faces", "recipe": "pretrain"}, 40),
                   {"task": "pretrain", "metric": "loss", "metric_label": "masked-patch reconstruction loss",
                    "best_value": None, "best_epoch": None, "epochs_done": 5, "best": None,  # as the trainer writes
                    "last": {"split": "train_epoch", "epoch": 5, "loss": 0.4213}})
    probe = finished(create("idprobe", {"task": "id_probe", "dataset": "bp4d", "recipe": "id_probe"}, 30),
                     {"task": "id_probe", "metric": "accuracy", "best_value": 0.2512, "best_epoch": 9,
                      "best": {"split": "test", "epoch": 9, "accuracy": 0.2512}})
    ev = finished(create("eval-last", {"task": "fer", "dataset": "rafdb", "recipe": "fmae",
                                       "eval_checkpoint": "/x/last.pt", "source_run": "r1"}, 20),
                  {"task": "fer", "metric": "accuracy", "best_value": 0.6611, "best_epoch": 4,
                   "best": {"split": "test", "epoch": 4, "accuracy": 0.6611}})
    fer = finished(create("", {"task": "fer", "dataset": "rafdb", "recipe": "fmae"}, 10),
                   {"task": "fer", "metric": "accuracy", "best_value": 0.7012, "best_epoch": 5,
                    "best": {"split": "test", "epoch": 5, "accuracy": 0.7012}})
    return {"au": au, "pretrain": pre, "probe": probe, "eval": ev, "fer": fer}


async def test_each_kind_shows_its_own_fields_and_number(tmp_path: Path) -> None:
    made = _kinds(tmp_path / "runs")
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        got = {k: (cell(table, r, "kind"), cell(table, r, "cell"), cell(table, r, "result")) for k, r in made.items()}
        assert got == {"au": ("AU", "f2 s0 λ2", "0.565 F1 best-thr"), "pretrain": ("MAE", "s0", "0.421 loss"),
                       "probe": ("probe", "s0", "0.251 acc"), "eval": ("eval", "s0", "0.661 acc"),
                       "fer": ("FER", "s0", "0.701 acc")}
        assert cell(table, made["eval"], "epoch") == "-"  # an eval trains no epochs
        table.move_cursor(row=table.get_row_index(made["pretrain"].id))
        await pilot.pause()
        below = " ".join(screen_text(app).split("─" * 20)[-1].split())
        assert "MAE pretrain" in below and "loss 0.421 (epoch 5)" in below and "fold" not in below

        await open_run(pilot)  # a finished pretraining run: its loss, no "no evaluation yet", no fold
        text = " ".join(screen_text(app).split())
        assert "MAE pretrain · faces · seed 0 · vit_tiny" in text and "fold" not in text
        assert "reconstruction loss 0.4213 at epoch 5 (the last)" in text
        await pilot.press("2")
        text = " ".join(screen_text(app).split())
        assert "pretraining has no test split" in text and "no evaluation yet" not in text


async def test_wide_terminal_shows_recipe_duration_and_speed(tmp_path: Path) -> None:
    made = _kinds(tmp_path / "runs")
    made["fer"].write_tags(["paper"])
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(200, 50)) as pilot:
        table = await open_runs(app, pilot)
        assert [str(c.label) for c in table.columns.values()] == [
            "", "state", "kind", "dataset", "fold seed λ", "model", "recipe", "epoch", "result", "duration",
            "images/s", "age", "tags", "run id"]
        fer = made["fer"]
        assert (cell(table, fer, "kind"), cell(table, fer, "model"), cell(table, fer, "recipe")) == ("FER", "vit_tiny", "fmae")
        assert cell(table, fer, "duration") == "2m00s" and cell(table, fer, "rate") == "412"
        assert cell(table, fer, "tags") == "paper" and cell(table, fer, "run") == fer.id
        assert cell(table, made["pretrain"], "kind") == "MAE pretrain"
        # "fold seed λ" heads three parts of one cell: each part starts under its word
        lines = screen_text(app).splitlines()
        header = next(line for line in lines if "fold seed λ" in line)
        au = next(line for line in lines if made["au"].id in line)
        assert [au.index(p) for p in ("f2 ", "s0 ", "λ2 ")] == [header.index(w) for w in ("fold", "seed", "λ")]
        pre = next(line for line in lines if made["pretrain"].id in line)
        assert pre.index("s0 ") == header.index("seed")  # no fold, no λ: the seed still under its word
        table.set_sort("duration")
        await pilot.pause()
        assert table.shown_ids[-1] == made["au"].id  # never started: no duration, last


async def test_degenerate_runs_are_flagged(runs: dict[str, RunDir], tmp_path: Path) -> None:
    done = runs["done"]
    summary = json.loads(done.summary_path.read_text())
    summary["best"]["best_threshold"] = 0.01  # every AU predicted present
    done.write_summary(summary)
    flagged_false = runs["running"]
    s2 = json.loads(flagged_false.summary_path.read_text())
    s2["best"]["best_threshold"], s2["degenerate"] = 0.99, False  # the trainer's own flag wins
    flagged_false.write_summary(s2)
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        assert cell(table, done, "result") == "⚠ degenerate"
        assert cell(table, flagged_false, "result").endswith("F1 best-thr")
        table.move_cursor(row=table.get_row_index(done.id))
        await pilot.pause()
        assert "degenerate:bestthreshold0.01=everyAUpredictedpresent" in squash(screen_text(app))
        await open_run(pilot)
        assert "⚠degenerate:bestthreshold0.01" in squash(screen_text(app))
