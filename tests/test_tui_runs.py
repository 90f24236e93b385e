"""The Runs screen, driven with Pilot over run folders built by hand (no training): a done AU run
with known per-AU F1s, a running one, a failed one, a corrupt one and a done FER run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from textual.message import Message
from textual.notifications import Notify

from fmae.runs import RunDir, make_run_id
from fmae_tui.app import create_app
from fmae_tui.screens.datasets import DatasetsScreen
from fmae_tui.screens.help import HelpScreen
from fmae_tui.screens.run import RunScreen
from fmae_tui.screens.runs import RunsScreen
from fmae.run_watch import RunScanner
from fmae_tui.widgets.runs_table import RunsTable
from tui_support import open_run, screen_text, squash, wait_until

AUS = ["AU1", "AU2", "AU4", "AU6"]
F1_05 = {"AU1": 0.41, "AU2": 0.37, "AU4": 0.52, "AU6": 0.76}
F1_BEST = {"AU1": 0.48, "AU2": 0.44, "AU4": 0.55, "AU6": 0.79}
AUC = {"AU1": 0.81, "AU2": 0.78, "AU4": 0.84, "AU6": 0.92}
PROVENANCE = {"fmae_version": "0.1.0", "git_commit": "3f2a9c1", "command": ["fmae", "train"], "host": "gpu-node-3"}


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d)


def _make(root: Path, dataset: str, model: str, seed: int, minutes_ago: int, *, fold: int | None = None,
          lam: float | None = None, task: str = "au") -> RunDir:
    config = {"task": task, "dataset": dataset, "seed": seed, "model": model, "epochs": 4, "blr": 0.0005,
              "batch_size": 64, "recipe": "fmae"}
    if fold is not None:
        config["fold"] = fold
    if lam is not None:
        config["lambda_id"] = lam
    when = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    run_id = make_run_id(dataset, model, seed, fold=fold, lambda_id=lam, now=when)
    return RunDir.create(root, run_id, config, PROVENANCE)


def _test_record(epoch: int, shift: float = 0.0) -> dict:
    f05 = {k: v - shift for k, v in F1_05.items()}
    fb = {k: v - shift for k, v in F1_BEST.items()}
    return {"split": "test", "epoch": epoch, "step": 100 * epoch, "f1_05": f05, "f1_05_mean": _mean(f05),
            "f1_best": fb, "f1_best_mean": _mean(fb), "best_threshold": 0.35, "auc": AUC, "auc_mean": _mean(AUC)}


def _train_records(run: RunDir, epoch: int, n: int = 4) -> None:
    for k in range(n):
        run.append_metrics({"split": "train", "epoch": epoch, "step": 100 * (epoch - 1) + 25 * (k + 1),
                            "epoch_frac": epoch - 1 + (k + 1) / n, "lr": 1e-4 * (k + 1), "loss": 1.0 / (epoch + k)})


def _au_summary(run: RunDir, best_epoch: int, epochs_done: int, shift: float = 0.0) -> None:
    best = _test_record(best_epoch, shift)
    run.write_summary({
        "run_id": run.id, "task": "au", "dataset": "bp4d", "metric": "f1_best_mean",
        "metric_label": "mean F1 at the best threshold (tuned on the test fold, as the paper)",
        "epochs": 4, "epochs_done": epochs_done, "step": 100 * epochs_done, "best_epoch": best_epoch,
        "best_value": best["f1_best_mean"], "best": best, "last": _test_record(epochs_done, 0.01)})


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, RunDir]:
    root = tmp_path / "runs"
    done = _make(root, "bp4d", "vit_large", 0, 120, fold=1, lam=2.0)
    done.mark_running(pid=1, host="gpu-node-3", gpus="0")
    for epoch in range(1, 5):
        _train_records(done, epoch)
        done.append_metrics(_test_record(epoch, 0.1 * (4 - epoch)))
    done.heartbeat(epoch=4, epochs=4, step=400, total_steps=400)
    _au_summary(done, 4, 4)
    done.mark_ended("done", exit_code=0)
    done.log_path.write_text("".join(f"log line {i}\n" for i in range(300)), encoding="utf-8")

    running = _make(root, "disfa", "vit_base", 1, 30, fold=2, lam=0.5)
    running.mark_running(pid=os.getpid(), host="gpu-node-4", gpus="1")
    running.heartbeat(epoch=2, epochs=4, step=150, total_steps=400)
    _train_records(running, 1)
    running.append_metrics(_test_record(1, 0.2))
    _au_summary(running, 1, 1, 0.2)

    failed = _make(root, "bp4d", "vit_base", 2, 60, fold=3, lam=0.0)
    failed.mark_running(pid=2, host="gpu-node-3")
    failed.mark_ended("failed", exit_code=1, error="CUDA out of memory")

    corrupt = _make(root, "bp4d", "vit_base", 0, 90, fold=2, lam=2.0)
    corrupt.status_path.write_text("{not json", encoding="utf-8")

    fer = _make(root, "rafdb", "vit_base", 0, 200, task="fer")
    fer.mark_running(pid=3, host="gpu-node-3")
    fer.mark_ended("done", exit_code=0)
    fer.write_summary({"metric": "accuracy", "metric_label": "top-1 accuracy", "best_value": 0.8712,
                       "best_epoch": 3, "epochs_done": 4,
                       "best": {"split": "test", "epoch": 3, "accuracy": 0.8712, "mean_class_recall": 0.8,
                                "per_class_recall": {"Surprise": 0.9, "Fear": 0.7}}})
    return {"done": done, "running": running, "failed": failed, "corrupt": corrupt, "fer": fer}


@pytest.fixture
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunsScreen, "POLL_S", 0.05)
    monkeypatch.setattr(RunScreen, "POLL_S", 0.05)


async def open_runs(app, pilot) -> RunsTable:
    await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.scans > 0)
    await pilot.pause()
    return app.screen.query_one(RunsTable)


def cell(table: RunsTable, run: RunDir, column: str) -> str:
    return str(table.get_cell(run.id, column))


async def test_runs_is_home_and_shows_every_run(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        # newest first: running (30 min ago), failed (60), corrupt (90), done (120), fer (200)
        assert table.shown_ids == [runs[k].id for k in ("running", "failed", "corrupt", "done", "fer")]
        assert {k: cell(table, r, "state") for k, r in runs.items()} == {
            "done": "done", "running": "running", "failed": "failed", "corrupt": "corrupt", "fer": "done"}
        assert cell(table, runs["done"], "result") == f"{_mean(F1_BEST):.3f} F1 best-thr"
        assert cell(table, runs["fer"], "result") == "0.871 acc"
        assert cell(table, runs["running"], "epoch") == "2/4"
        assert cell(table, runs["done"], "cell") == "f1 s0 λ2" and cell(table, runs["running"], "cell") == "f2 s1 λ0.5"
        assert cell(table, runs["fer"], "cell") == "s0"  # no fold or λ where they mean nothing
        assert cell(table, runs["done"], "kind") == "AU" and cell(table, runs["fer"], "kind") == "FER"
        assert cell(table, runs["corrupt"], "result").startswith("status.json: not")

        text = screen_text(app)
        assert "5 runs · sort age (newest first)" in text
        assert "step 150/400 (37%)" in text  # the selected (first) run's line under the table
        footer = text.splitlines()[-1]
        for key in ("⏎ Open", "/ Filter", "s Sort", "l Launch", "j Queue", "R Results", "? Help", "q Quit"):
            assert key in footer, (key, footer)

        await pilot.press("down", "down")  # the corrupt run says what is wrong with it
        assert "corrupt: status.json: not valid JSON" in screen_text(app)
        await pilot.press("up")
        assert "failed (exit 1): CUDA out of memory" in screen_text(app)


async def test_sort_orders_the_rows(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        await pilot.press("s")  # state: running first
        assert table.shown_ids[0] == runs["running"].id and "sort state ↑" in screen_text(app)
        table.set_sort("result")  # highest first; runs without a result last
        await pilot.pause()
        assert table.shown_ids[:3] == [runs["fer"].id, runs["done"].id, runs["running"].id]
        await pilot.press("S")
        assert table.shown_ids[-3:] == [runs["running"].id, runs["done"].id, runs["fer"].id]
        assert "sort result ↑" in screen_text(app)
        await pilot.press("f", "escape")  # escape on the table clears every filter
        assert table.row_count == 5 and "5 runs · sort result ↑" in screen_text(app)


async def test_filters_change_the_rows(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        await pilot.press("f")  # state filter cycles: queued, running, …
        assert table.row_count == 0 and "0 of 5 runs · state queued · sort age" in screen_text(app)
        await pilot.press("f", "f")
        assert table.shown_ids == [runs["done"].id, runs["fer"].id]
        assert [table.cycle_state_filter() for _ in range(4)] == ["failed", "cancelled", "corrupt", None]
        assert table.row_count == 5

        await pilot.press("slash", *"ds:bp4d")
        assert sorted(table.shown_ids) == sorted(runs[k].id for k in ("done", "failed", "corrupt"))
        await pilot.press("space", *"l:2")
        assert sorted(table.shown_ids) == sorted([runs["done"].id, runs["corrupt"].id])
        await pilot.press("enter")  # keeps the filter, back to the table
        assert table.has_focus and "filter ds:bp4d l:2" in screen_text(app)
        await pilot.press("slash", "escape")  # clears it
        assert table.row_count == 5
        await pilot.press("slash", *"memo", "enter")  # plain text matches the error too
        assert table.shown_ids == [runs["failed"].id]


async def test_a_burst_of_typing_filters_once_by_what_was_typed_last(runs: dict[str, RunDir], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys typed faster than the table filters (at 100,000 runs a filter takes ~0.2 s): the values typed
    over are not filtered by, the last one is (a burst in tmux took 4.7 s to show, now 0.3 s)."""
    from fmae_tui.widgets.prompt_bar import PromptBar

    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        await pilot.press("slash")
        filtered: list[str] = []
        real = table.set_text_filter
        monkeypatch.setattr(table, "set_text_filter", lambda text: filtered.append(text) or real(text))
        bar = app.screen.query_one("#filter", PromptBar)
        for typed in ("d", "ds", "ds:", "ds:b", "ds:bp4d", "ds:bp4d l", "ds:bp4d l:2"):
            bar.value = typed  # each posts its Changed; none is handled before the last is typed
        await wait_until(pilot, lambda: filtered, what="the filter")
        await pilot.pause()
        assert filtered == ["ds:bp4d l:2"]
        assert sorted(table.shown_ids) == sorted([runs["done"].id, runs["corrupt"].id])
        assert "2 of 5 runs · filter ds:bp4d l:2" in screen_text(app)


async def test_corrupt_run_opens_and_says_why(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await open_run(pilot, runs["corrupt"].id)
        text = " ".join(screen_text(app).split())
        assert "corrupt" in text and "status.json: not valid JSON" in text and "fold 2" in text


async def test_table_follows_the_folder_patching_rows(runs: dict[str, RunDir], tmp_path: Path,
                                                      fast_polling: None, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        screen = app.screen
        rebuilds = table.rebuilds
        runs["running"].heartbeat(epoch=3, step=260)
        await wait_until(pilot, lambda: cell(table, runs["running"], "epoch") == "3/4")
        assert "step 260/400 (65%)" in screen_text(app)

        new = _make(tmp_path / "runs", "bp4d", "tiny", 5, 0, fold=1, lam=0.0)
        await wait_until(pilot, lambda: new.id in table.shown_ids)
        assert table.shown_ids[0] == new.id and cell(table, new, "state") == "queued"
        table.move_cursor(row=table.get_row_index(new.id))
        await pilot.pause()
        assert "queued0sago" in squash(screen_text(app))
        import types

        from fmae_tui.screens import runs as runs_screen

        later = time.time() + 300  # five minutes on: the selected run's line ages with the age column
        screen._poll_timer.pause()  # no look meanwhile: a run this new is read again at each look
        await pilot.pause(0.1)
        with monkeypatch.context() as patch:
            patch.setattr(runs_screen, "time", types.SimpleNamespace(time=lambda: later))
            screen._tick_ages()
            await pilot.pause()
            assert "queued5mago" in squash(screen_text(app)), screen_text(app)
        screen._poll_timer.resume()
        runs["failed"].mark_queued()
        await wait_until(pilot, lambda: cell(table, runs["failed"], "state") == "queued")
        os.rename(runs["fer"].path, tmp_path / "runs" / ".trash")
        await wait_until(pilot, lambda: runs["fer"].id not in table.shown_ids)
        assert table.rebuilds == rebuilds  # every change above patched rows in place
        assert "5 runs" in screen_text(app)
        assert screen.query_one("#run-info")  # still there


async def test_the_first_look_writes_the_runs_index_once_its_rows_are_shown(runs: dict[str, RunDir], tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The look that read the folders writes runs/.runs-table.json after its rows are on screen (the next
    process's first look starts from it, reading only what changed)."""
    from fmae import run_watch

    monkeypatch.setattr(run_watch, "RACY_NS", 0)  # the folders were written just now
    monkeypatch.setattr(run_watch, "_SHARED", {})
    index = tmp_path / "runs" / run_watch.INDEX_NAME
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        assert table.row_count == 5
        await wait_until(pilot, index.is_file, what="the runs index")
        ids = sorted(table.runs, reverse=True)
    assert [json.loads(line.partition("\t")[0])[0] for line in index.read_text().splitlines()[1:]] == ids  # newest first


def test_scanner_reads_only_the_runs_that_changed(runs: dict[str, RunDir], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from fmae import run_watch as run_scanner

    monkeypatch.setattr(run_scanner, "RACY_NS", 0)  # the fixture's files are all brand new
    scanner = RunScanner(tmp_path / "runs")
    changed, removed = scanner.scan()
    assert len(changed) == 5 and not removed
    loads = scanner.loads
    assert scanner.scan() == ([], [])
    runs["running"].heartbeat(step=170)
    changed, _ = scanner.scan()
    assert [info.id for info, _, _ in changed] == [runs["running"].id] and scanner.loads == loads + 1
    runs["done"].write_tags(["paper"])  # a finished run's folder is looked at every FINAL_EVERY-th look
    looks = [scanner.scan()[0] for _ in range(run_scanner.FINAL_EVERY)]
    assert [[(info.id, tags) for info, tags, _ in changed] for changed in looks if changed] == \
        [[(runs["done"].id, ["paper"])]]
    (tmp_path / "runs" / "queue.sqlite").write_text("")  # files and hidden folders are not runs
    (tmp_path / "runs" / ".x.creating").mkdir()
    (tmp_path / "runs" / "claimed-but-empty").mkdir()
    assert scanner.scan() == ([], [])


async def test_tags_are_written_and_checked(runs: dict[str, RunDir], tmp_path: Path) -> None:
    seen: list[Message] = []
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        table = await open_runs(app, pilot)
        run = runs["running"]
        await pilot.press("t", *"base paper", "enter")
        assert run.read_tags() == ["base", "paper"]
        assert table.tags[run.id] == ["base", "paper"]
        assert "tags base paper" in screen_text(app)
        await pilot.press("t", "ctrl+u", *"a/b", "enter")
        errors = [m.notification for m in seen if isinstance(m, Notify) and m.notification.severity == "error"]
        assert errors and "tag 'a/b'" in errors[-1].message
        assert run.read_tags() == ["base", "paper"]
        await pilot.press("escape")
        assert table.has_focus
        await pilot.press("slash", *"tag:base", "enter")
        assert table.shown_ids == [run.id]


async def test_datasets_by_key_and_when_there_are_no_runs(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await pilot.press("d")
        assert isinstance(app.screen, DatasetsScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("escape")  # home: nothing under it
        assert isinstance(app.screen, RunsScreen)

    app = create_app(runs_dir=tmp_path / "empty")
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.screen, DatasetsScreen)
        await pilot.press("escape")
        await open_runs(app, pilot)
        assert "no runs yet in" in screen_text(app)
        _make(tmp_path / "empty", "bp4d", "vit_tiny", 0, 1, fold=1, lam=0.0)  # the next look shows it
        await wait_until(pilot, lambda: app.screen.table.row_count == 1, timeout=10)
        await pilot.pause()
        assert "1 run · sort age" in screen_text(app)


async def test_help_lists_the_runs_and_run_keys(runs: dict[str, RunDir], tmp_path: Path) -> None:
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(120, 50)) as pilot:  # at 80×24 the list scrolls

        await open_runs(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for key, what in (("⏎", "Open"), ("/", "Filter"), ("s", "Sort"), ("f", "State"), ("t", "Tags"),
                          ("r", "Refresh"), ("S", "Reverse sort"), ("d", "Datasets"), ("l", "Launch"),
                          ("j", "Queue"), ("R", "Results"), ("g", "GPUs")):
            assert f"│ {key} " in text and what in text, (key, text)
        await pilot.press("escape", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("question_mark")
        text = screen_text(app)
        for what in ("Back", "Notes", "Curves tab", "Scores tab", "Log tab", "Config tab", "Notes tab", "Per-AU tab",
                     "Cancel run", "Wrap", "Per-AU F1"):
            assert what in text, (what, text)


async def test_large_terminal_shows_tags_and_ids(runs: dict[str, RunDir], tmp_path: Path) -> None:
    runs["done"].write_tags(["paper"])
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(200, 50)) as pilot:
        table = await open_runs(app, pilot)
        assert cell(table, runs["done"], "tags") == "paper" and cell(table, runs["done"], "run") == runs["done"].id
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert [str(c.label) for c in table.columns.values()] == \
            ["", "state", "kind", "dataset", "cell", "model", "epoch", "result", "age"]


def test_app_with_runs_never_imports_torch(runs: dict[str, RunDir], tmp_path: Path) -> None:
    """A fresh interpreter: start on the runs, open one, look at every tab, leave."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from fmae_tui.app import create_app

        async def main():
            app = create_app(runs_dir=Path({str(tmp_path / "runs")!r}))
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause(0.3)
                await pilot.press("enter")
                await pilot.pause(0.3)
                await pilot.press("2", "3", "4", "5", "escape")
                print(type(app.screen).__name__)
        asyncio.run(main())
        print("torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RunsScreen", "False"]


def test_the_cell_column_is_the_same_text_made_once_per_study_cell() -> None:
    """The Runs table's cell column comes from a cache over (task, fold, seed, λ): exactly what
    cell_fields says for each config, an int fold not mistaken for a float one, unhashable values made
    each time."""
    from fmae_tui.run_kind import cell_fields
    from fmae_tui.widgets.runs_table import aligned_cell, study_cell

    configs = [{"task": "au", "fold": 1, "seed": 0, "lambda_id": 2.0}, {"task": "au", "fold": 1.0, "seed": 0},
               {"task": "fer", "fold": 1, "seed": 3}, {"task": "au", "fold": [1], "seed": 0}, {}]
    for config in configs * 2:
        assert study_cell(config, wide=False) == (cell_fields(config) or "-")
        assert study_cell(config, wide=True) == (aligned_cell(config) or "-")
    assert study_cell(configs[1], wide=False) == "f1.0 s0" and study_cell(configs[0], wide=False) == "f1 s0 λ2"
