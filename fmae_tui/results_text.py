"""What the Results screen writes around its numbers: the head above the table (what every number is,
what Δ is against, how many notes) and each group's cell (its name, what a partial row holds, the Δ's
reference). Each line short enough for 80 columns, so nothing is cut off."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rich.text import Text

from fmae.metric_catalogue import F1_BEST

if TYPE_CHECKING:
    from fmae.report import GroupRow, Report, Results


def head_text(results: Results, index: int, report: Report, base: GroupRow | None, complete_only: bool,
              metric: str) -> Text:
    head = Text(report.title, "bold")
    if len(results.reports) > 1:
        head.append(f" · table {index + 1}/{len(results.reports)} (tab)", "dim")
    head.append(f"\n{report.value_label} · {report.epoch_label.split(' (')[0]}")
    if complete_only:
        head.append(" · complete only (c)", "bold")
    if base is not None:
        head.append(f"\nΔ: each row − the pinned ★ {base.label}", "bold")
    elif any(r.delta_vs for r in report.rows) and not report.paper_note:
        head.append("\nΔ: each row − the paper's row named in its group cell")
    if report.paper_note:  # the full sentence is among the notes (n)
        head.append("\nthe paper publishes no AUC: its rows are not shown" if metric == "auc" else
                    f"\npaper rows: {F1_BEST.title}, not like for like with these (m)", "dim")
    notes = [n for n in report.notes() if n != report.paper_note]
    if notes:
        head.append(f"\n{len(notes)} note(s) on these rows: n shows them", "dim")
    return head


def group_cell(row: GroupRow, pinned: bool, reference: str | None) -> Text:
    """The group's name (★ pinned, ⚠ degenerate runs), what a partial row holds, and what its Δ is against."""
    cell = Text(row.group + (" ★" if pinned else ""), "bold" if pinned else "")
    if row.degenerate:
        cell.append(f" ⚠ {len(row.degenerate)} degenerate", "bold yellow")
    if row.partial:
        cell.append(f"\n{row.coverage_label} (partial)", "italic")
    if reference:
        cell.append(f"\n{reference}", "dim")
    return cell


def note_text(note: str) -> str:
    """A report note in the screen's words: the key that groups rows (k), not `fmae report`'s flag."""
    return re.sub(r"\(--by (\S+) separates them\)", r"(k: group by \1 separates them)", note)
