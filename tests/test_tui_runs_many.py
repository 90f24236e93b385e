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


async def test_parts_newest_first_grow_the_order_as_a_whole_table_would(tmp_path: Path) -> None:
    """A first look's parts come newest first and are appended to the order the table keeps; a newer
    run, a changed one, a filter or a run gone make it again. At each step the rows shown are what one
    table given everything at once shows."""
    from dataclasses import replace

    _make(tmp_path / "runs", "disfa", "vit_tiny", 0, 60 * 24 * 90)  # one real run: the app opens on Runs
    infos = _infos(tmp_path)[:300]
    newest_first = sorted(infos, key=lambda x: x[0].id, reverse=True)
    app = create_app(runs_dir=tmp_path / "runs")
    async with app.run_test(size=(120, 30)) as pilot:
        table = await open_runs(app, pilot)
        real = list(table.runs.values())[0]

        def expect(held, filt=lambda info: True) -> list[str]:
            return [i.id for i in sorted(held, key=lambda i: i.id, reverse=True) if filt(i)]

        held = [real]
        for part in (newest_first[1:50], newest_first[50:200]):  # older than all before them: appended
            table.apply(part, [])
            held += [info for info, _, _ in part]
            assert table.shown_ids == expect(held)
        table.apply(newest_first[:1], [])  # the newest of all: the order is made again
        held.append(newest_first[0][0])
        assert table.shown_ids == expect(held)
        table.set_text_filter("seed:7")
        assert table.shown_ids == expect(held, lambda i: i.config.get("seed") == 7)
        table.apply(newest_first[200:], [])  # appended under a filter
        held += [info for info, _, _ in newest_first[200:]]
        assert table.shown_ids == expect(held, lambda i: i.config.get("seed") == 7)
        seven = next(info for info in held if info.config.get("seed") == 7)
        moved = replace(seven, config={**seven.config, "seed": 8})  # a changed run leaves the filter
        table.apply([(moved, [], None)], [held[5].id])  # and one run goes
        held = [moved if i.id == seven.id else i for i in held if i.id != held[5].id]
        assert table.shown_ids == expect(held, lambda i: i.config.get("seed") == 7) and seven.id not in table.shown_ids
        table.set_text_filter("")
        assert table.shown_ids == expect(held) and table.row_count == 300
