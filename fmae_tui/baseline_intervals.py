"""The Results screen's pinned-baseline Δ with its 95 % interval: for each row against the pinned ★ row,
`fmae.report.compare.compare_rows` — a bootstrap over test subjects from the runs' saved predictions,
over the (fold, seed) cells both rows hold, as `fmae compare` prints it.

A comparison reads every cell's predictions and draws 2,000 resamples, so it runs in a worker and is kept:
its key is the metric and the runs of both rows' cells, and a finished run's predictions do not change,
so the table's rebuild every few seconds recomputes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INTERVAL_LABEL = "[95% interval]"  # the group cell's line beside the intervals (80 columns: short)
INTERVAL_HEAD = "[…]: 95% interval of Δ, bootstrap over test subjects (as fmae compare)"


def _cells(row: Any) -> tuple:
    return tuple(sorted(((fold if fold is not None else -1), smp.seed, run)
                        for smp in row.samples for fold, run in zip(smp.folds or [None], smp.runs)))


def key_of(row: Any, base: Any, metric: str) -> tuple:
    return metric, _cells(row), _cells(base)


class BaselineIntervals:
    """The intervals computed so far, by `key_of`: a MetricDelta, or the one line that said why not."""

    def __init__(self) -> None:
        self.done: dict[tuple, Any] = {}

    def wanted(self, rows: list[Any], base: Any, metric: str, epoch: str) -> list[tuple[tuple, Any]]:
        """(key, row) of the AU rows whose interval against `base` is not known yet. Only for the best
        epoch: the saved predictions are the best epoch's."""
        if base is None or epoch != "best" or base.task != "au":
            return []
        return [(k, row) for row in rows if row is not base and row.n
                and (k := key_of(row, base, metric)) not in self.done]

    @staticmethod
    def compute(runs_dir: Path, jobs: list[tuple[tuple, Any]], base: Any, metric: str) -> dict[tuple, Any]:
        """In a worker: each row's MetricDelta against `base`, or the error line (no predictions…)."""
        from fmae.errors import FmaeError
        from fmae.report.compare import compare_rows

        out: dict[tuple, Any] = {}
        for key, row in jobs:
            try:
                out[key] = compare_rows(runs_dir, row, base, metric=metric)
            except FmaeError as e:
                out[key] = str(e)
        return out

    def head(self, rows: list[Any], base: Any, metric: str, epoch: str) -> str | None:
        """The line above the table that says what the intervals are (or why there are none yet)."""
        if base is None or base.task != "au":
            return None
        if epoch != "best":
            return "Δ intervals: for the best epoch only (e)"
        return "Δ intervals: computing…" if self.wanted(rows, base, metric, epoch) else INTERVAL_HEAD

    def line(self, row: Any, base: Any, metric: str, epoch: str, column: str, digits: int) -> str | None:
        """"[-0.3, +2.7]" under a row's Δ in one column, or None when there is none (yet)."""
        if base is None or row is base or epoch != "best":
            return None
        found = self.done.get(key_of(row, base, metric))
        if found is None or isinstance(found, str):
            return None
        low, high = found.low.get(column), found.high.get(column)
        if low is None or high is None:
            return None
        return f"[{low:+.{digits}f}, {high:+.{digits}f}]"

    def note(self, rows: list[Any], base: Any, metric: str) -> str | None:
        """Why a row has no interval (the first such reason), for the screen to say once."""
        for row in rows:
            if row is base or base is None:
                continue
            found = self.done.get(key_of(row, base, metric))
            if isinstance(found, str):
                return f"{row.label}: no interval — {found}"
        return None
