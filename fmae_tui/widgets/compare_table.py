"""Several runs' best-epoch scores side by side: one row per AU (or class), per run its F1@0.5, F1 at
the best threshold (tuned on test) and AUC, the best of each AU's column group in bold. A DataTable, so
more runs than 80 columns hold scroll sideways."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from fmae.metric_catalogue import AU_METRICS


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _columns(records: list[dict[str, Any]], au: bool) -> tuple[list[tuple[str, str, str]], list[str]]:
    """([(per-row key, mean key, label)], row names): the AU layout for AU runs (or when any run has
    per-AU scores), else the FER one (per-class recall)."""
    if au or any(isinstance(r.get("f1_05"), dict) for r in records):
        cols = [(m.per_au or m.key, m.key, m.short) for m in AU_METRICS]
        key = "f1_05"
    else:
        cols = [("per_class_recall", "mean_class_recall", "recall")]
        key = "per_class_recall"
    names: dict[str, None] = {}
    for r in records:
        if isinstance(r.get(key), dict):
            names.update(dict.fromkeys(r[key]))
    return cols, list(names)


class CompareTable(DataTable):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, header_height=2, **kwargs)

    def show(self, runs: list[tuple[str, str, dict[str, Any] | None]], au: bool = False) -> None:
        """Rebuild from (letter, Rich colour, best test record or None) per run (`au`: AU runs, whether
        or not they were evaluated yet); a few dozen rows at most, so no patching."""
        cursor = self.cursor_row
        self.clear(columns=True)
        records = [rec or {} for _, _, rec in runs]
        cols, names = _columns(records, au)
        self.add_column(Text("\nAU" if cols[0][0] == "f1_05" else "\nclass"), key="name")
        for i, (letter, colour, _) in enumerate(runs):
            for j, (per, _, label) in enumerate(cols):  # the run's letter over its first column
                self.add_column(Text.assemble((letter if j == 0 else "", f"bold {colour}"), f"\n{label}"),
                                key=f"{i}:{per}")
        rows: list[tuple[str, list[float | None]]] = []
        for name in names:
            rows.append((name, [_number((rec.get(per) or {}).get(name)) if isinstance(rec.get(per), dict) else None
                                for rec in records for per, _, _ in cols]))
        rows.append(("mean", [_number(rec.get(mean)) for rec in records for _, mean, _ in cols]))
        if cols[0][0] != "f1_05":
            rows.append(("accuracy", [_number(rec.get("accuracy")) for rec in records for _ in cols]))
        rows.append(("epoch", [_number(rec.get("epoch")) for rec in records for _ in cols]))
        width = len(cols)
        for name, values in rows:
            cells = []
            for j, value in enumerate(values):
                if value is None:
                    cells.append(Text("-", justify="right"))
                elif name == "epoch":
                    cells.append(Text(f"{value:g}" if j % width == 0 else "", justify="right"))
                else:
                    same = [v for v in values[j % width::width] if v is not None]  # this metric, every run
                    best = len(same) > 1 and value == max(same)
                    cells.append(Text(f"{value:.3f}", "bold" if best else "", justify="right"))
            self.add_row(Text(name, "bold"), *cells, key=name)
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1), scroll=False)
