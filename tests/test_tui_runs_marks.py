"""Marks on the Runs screen: `space` marks the run under the cursor (a ● in the first column), marks
belong to run ids and survive re-sorts, filters and refreshes; `marked_run_dirs()` lists them in marking
order (what Compare reads) and `clear_marks()` drops them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmae.runs import RunDir
from fmae_tui.app import create_app
from fmae_tui.screens.runs import RunsScreen
from test_tui_runs import _make, cell, open_runs, runs  # noqa: F401 (runs is a fixture)
from tui_support import screen_text, wait_until


def _row_line(app, run_id: str) -> str:
    """The terminal line that shows `run_id`'s row (found by its age-ordered position on screen)."""
    table = app.screen.query_one("#runs")
    y = table.region.y + 1 + table.get_row_index(run_id) - round(table.scroll_y)  # 1: the header
    return screen_text(app).splitlines()[y]


async def test_space_marks_runs_that_survive_resort_filter_and_refresh(runs: dict[str, RunDir], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # at 80x24; the wide layout's mark column is checked in test_tui_runs_many.py
    monkeypatch.setattr(RunsScreen, "POLL_S", 0.05)
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_runs(app, pilot)
        done, failed = runs["done"], runs["failed"]
        for run in (failed, done):  # marking order, not table order
            table.move_cursor(row=table.get_row_index(run.id))
            await pilot.press("space")
        assert table.marked_run_dirs() == [failed.path, done.path]
        assert cell(table, done, "mark") == "●" and cell(table, runs["fer"], "mark") == " "
        assert _row_line(app, done.id).split()[:2] == ["●", "done"]
        assert "2 marked" in screen_text(app)

        await pilot.press("S")  # re-sorted: the marks stay on their runs
        assert table.marked_run_dirs() == [failed.path, done.path] and cell(table, failed, "mark") == "●"
        await pilot.press("f", "f", "f")  # only done runs: the failed run's mark waits out of sight
        assert failed.id not in table.shown_ids and table.marked_run_dirs() == [failed.path, done.path]
        await pilot.press("escape")
        assert cell(table, failed, "mark") == "●"
        _make(tmp_path / "runs", "bp4d", "vit_tiny", 7, 0, fold=1, lam=0.0)  # a refresh that adds a row
        await wait_until(pilot, lambda: table.row_count == 6)
        assert table.marked_run_dirs() == [failed.path, done.path]

        table.move_cursor(row=table.get_row_index(failed.id))
        await pilot.press("space")  # a second press unmarks
        assert table.marked_run_dirs() == [done.path] and cell(table, failed, "mark") == " "
        assert "1 marked" in screen_text(app)
        table.clear_marks()
        await pilot.pause()
        assert table.marked_run_dirs() == [] and cell(table, done, "mark") == " "
        assert "marked" not in screen_text(app)
