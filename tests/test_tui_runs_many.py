"""The Runs table with thousands of runs at 200 columns (handed to the table as a scan hands them, no folders on disk):
only the lines on screen are drawn, filter and sort move rows without losing the cursor's run, End and
PgDn reach the bottom."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmae.runs import RunInfo
from fmae_tui.app import create_app
from fmae_tui.widgets.virtual_table import VirtualTable
from test_tui_runs import _make, open_runs
from tui_support import screen_text

N = 2000


def _infos(root: Path) -> list[tuple[RunInfo, list[str], float | None]]:
    out = []
    for i in range(N):
        run_id = f"20261101-{i // 60:04d}{i % 60:02d}-bp4d-f{i % 3 + 1}-s{i}-l0-vit_tiny-beef"
        config = {"task": "au", "dataset": "bp4d", "fold": i % 3 + 1, "seed": i, "lambda_id": 0.0,
                  "model": "vit_tiny", "recipe": "fmae", "epochs": 4}
        summary = {"metric": "f1_best_mean", "best_value": i / N, "best_epoch": 4,
                   "best": {"epoch": 4, "best_threshold": 0.4, "f1_best": {"AU1": 0.5}}}
        status = {"state": "done", "created": "2026-11-01T00:00:00Z"}
        out.append((RunInfo(run_id, root / run_id, "done", config, status, summary), [], None))
    return out


async def test_thousands_of_runs_draw_only_the_screen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = (200, 50)  # wide: every column (80x24 is the other Runs tests' size)
    drawn: list[int] = []
    line = VirtualTable.render_line
    monkeypatch.setattr(VirtualTable, "render_line", lambda self, y: drawn.append(y) or line(self, y))
    _make(tmp_path / "runs", "disfa", "vit_tiny", 0, 60 * 24 * 90)  # one real run: the app opens on Runs
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=size) as pilot:
        table = await open_runs(app, pilot)
        table.apply(_infos(tmp_path), [])
        await pilot.pause()
        assert table.row_count == N + 1 and table.shown_ids[0].split("-")[4] == f"s{N - 1}"  # newest first
        assert table.selected_id == table.shown_ids[-1]  # the cursor stayed on the run it was on
        await pilot.press("home")
        await pilot.pause()
        drawn.clear()
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor_row == N and "disfa" in screen_text(app)  # the oldest: the real one
        assert 0 < len(drawn) <= 2 * size[1], len(drawn)  # a screenful of lines, not 2,000 rows
        table.move_cursor(row=table.get_row_index(table.shown_ids[N // 2]))
        mine = table.selected_id
        await pilot.press("s", "s", "s", "s", "s", "s", "s", "s")  # sort by result (best first)
        assert table.sort_label == "result ↓" and table.selected_id == mine
        assert table.shown_ids[0].split("-")[4] == f"s{N - 1}"
        drawn.clear()
        table.set_text_filter("seed:7")
        await pilot.pause()
        assert table.shown_ids and all(r.split("-")[4] == "s7" for r in table.shown_ids)
        assert len(drawn) <= 2 * size[1]
        during = table.selected_id  # the cursor's run left the view: the row in its place took it
        assert during in table.shown_ids
        table.set_text_filter("")
        await pilot.pause()
        assert table.row_count == N + 1 and table.selected_id == during  # it stays on that run
        mine = during
        await pilot.press("pagedown")
        assert table.get_row_index(mine) < table.cursor_row  # a page further down
        await pilot.press("space")  # a mark at this width: in the first column of the cursor's row
        marked = table.selected_id
        assert table.marked_run_dirs() == [table.runs[marked].path]
        line = next(t for t in screen_text(app).splitlines() if marked in t)
        assert line.split()[:2] == ["●", table.runs[marked].state]
