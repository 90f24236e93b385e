"""VirtualTable's held rows and column widths (fmae_tui/widgets/virtual_table.py), unmounted: a batch of
rows is measured a column at a time, and must come to what rows put one at a time come to."""

from __future__ import annotations

from rich.text import Text

from fmae_tui.widgets.virtual_table import VirtualTable


def _table() -> VirtualTable:
    table = VirtualTable()
    for key in ("id", "state", "cell", "n"):
        table.add_column(key, key=key)
    return table


def _widths(table: VirtualTable) -> list[int]:
    return [table._column_width(i) for i in range(len(table.columns))]


def test_a_batch_is_held_and_measured_as_rows_one_at_a_time() -> None:
    done = Text("done", "green")  # one styled cell shared by rows, as the Runs table shares them
    rows = [("r1", ["r1", done, "f1 s0 λ2", 7]), ("r2", ["r2", Text("cancelled", "dim"), "日本語日本", None]),
            ("r3", ["r3", done, "f1", 12345])]
    batch, single = _table(), _table()
    batch.put_rows(rows)
    for key, cells in rows:
        single.put_row(key, cells)
    assert _widths(batch) == _widths(single) == [2, 9, 10, 5]  # "日本語日本" is 10 cells wide, 5 characters
    assert batch._rows == single._rows and batch.get_cell("r2", "n") == "-" and batch.get_cell("r1", "n") == "7"
    # the widest cells replaced, and one row put twice in a batch (its last cells count, once)
    change = [("r2", ["r2", done, "f2", 1]), ("r3", ["r3", done, "f3", 2]), ("r3", ["r3", done, "f3", 3])]
    batch.put_rows(change)
    for key, cells in change:
        single.put_row(key, cells)
    assert _widths(batch) == _widths(single) == [2, 5, 8, 1]
    assert batch.get_cell("r3", "n") == "3"
    batch.drop_rows(["r1"])  # the last wide cell of the cell column gone: it narrows to its header
    assert _widths(batch) == [2, 5, 4, 1]
