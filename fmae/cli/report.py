"""`fmae report`: per-AU tables over folds and seeds, the paper beside them, completeness, export.

The numbers come from `fmae.report.build` (the app's Results screen calls the same); this module
parses the options, prints warnings, and renders: a Rich table in the terminal, or md / latex / csv /
json on stdout or into `--out FILE` (written atomically).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fmae.cli.common import ConfigOpt, RunsDirOpt, err, out
from fmae.errors import FmaeError

app = typer.Typer()

DEGENERATE_MARK = "(!)"  # beside a row holding a run whose best threshold sits at the grid's edge


@app.command("report")
def report_cmd(
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", "-d", help="Only this benchmark (repeatable; default: every one with runs).")] = None,
    by: Annotated[Optional[list[str]], typer.Option("--by", help="Also group by this config key (repeatable), e.g. epochs, blr, init.")] = None,
    metric: Annotated[str, typer.Option("--metric", help="AU number: f1 (F1@0.5), f1_best (F1 at the best threshold, tuned on test: the paper's) or auc. FER and probes: top-1.")] = "f1",
    epoch: Annotated[str, typer.Option("--epoch", help="best (each run's best epoch, as the paper) or last.")] = "best",
    threshold: Annotated[Optional[str], typer.Option("--threshold", help="Re-score the saved test predictions: a number (e.g. 0.4), test-tuned (one threshold for all AUs: the paper's) or per-au (each AU its own; both tuned on test).")] = None,
    state: Annotated[str, typer.Option("--state", help="Score runs in these states: done (default), e.g. done,running, or all.")] = "done",
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Only runs carrying this tag (repeatable: every one given).")] = None,
    vs: Annotated[str, typer.Option("--vs", help="Paper method each row is compared with: auto (FMAE-IAT for λ > 0, else FMAE), a method (e.g. MDHR), or none.")] = "auto",
    complete_only: Annotated[bool, typer.Option("--complete-only", help="Only seeds that have every fold. Default: seeds missing folds form their own partial rows, named by the folds they hold (never averaged with complete seeds).")] = False,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Widen the completeness grids to these seeds as well, e.g. 0,1,2 (default: the seeds each group's runs used).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table (default), md, latex, csv or json.")] = "table",
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file (atomically) instead of stdout; a relative path goes under <runs folder>/exports/.")] = None,
    digits: Annotated[Optional[int], typer.Option("--digits", help="Decimals shown (default: 1 for AU F1/AUC, 2 for accuracy).")] = None,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="Show the completeness grid of each group (table, md).")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="A run folder that cannot be read is an error, not a warning.")] = False,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Per-AU results averaged over folds, mean ± std over seeds, beside the paper's; completeness and export."""
    from fmae.atomic_write import write_text_atomic
    from fmae.config import load_project
    from fmae.report import Scoring, Selection, build
    from fmae.report.export import FORMATS, render
    from fmae.run_cache import cached_list_runs

    if fmt not in FORMATS:
        raise FmaeError(f"--format {fmt}: choose {', '.join(FORMATS)}")
    if digits is not None and not 0 <= digits <= 6:
        raise FmaeError(f"--digits {digits}: choose 0..6")
    project = load_project(config, runs_dir)
    states = tuple(s.strip() for s in state.split(",") if s.strip())
    selection = Selection(tuple(dataset or ()), states, tuple(tag or ()), tuple(by or ()))
    extra = [*(["--config", str(config)] if config else []), *(["--runs-dir", str(runs_dir)] if runs_dir else [])]
    from fmae.queue_ops import parse_ints

    results = build(project.runs_dir, selection, Scoring(metric, epoch, threshold), versus=vs,
                    complete_only=complete_only, seeds=parse_ints(seeds, "--seeds") or [], project=project,
                    command_extra=extra, infos=cached_list_runs(project.runs_dir))
    for line in results.skipped:
        err.print(f"warning: skipped {line}", soft_wrap=True)
    if strict and results.skipped:
        raise FmaeError(f"{len(results.skipped)} run folder(s) could not be read (listed above); --strict stops here")
    if not any(report.rows for report in results.reports):
        what = ", ".join(filter(None, [
            f"dataset {', '.join(results.selection.datasets)}" if results.selection.datasets else "",
            f"tag {', '.join(results.selection.tags)}" if results.selection.tags else "",
            f"state {','.join(results.selection.states)}"]))
        waiting = sum(sum(n for s, n in g.counts().items() if s in ("running", "queued"))
                      for r in results.reports for g in r.grids)
        why = (" — every matching folder was skipped (see the warnings)" if results.skipped else
               f" — {waiting} run(s) still running or queued (--state all scores what they have)" if waiting else "")
        raise FmaeError(f"no training runs to report in {project.runs_dir} ({what}){why}")
    if fmt == "table":
        text = None if out_file is None else _plain(render_rich(results, digits, grid))
    else:
        text = render(results, fmt, digits, grid)
    if out_file is not None:
        from fmae.report.export import export_path

        target = export_path(project.runs_dir, out_file)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, text or "")
        except OSError as e:
            raise FmaeError(f"--out {target}: cannot write ({e.strerror or e})") from None
        err.print(f"wrote {target} ({fmt})", soft_wrap=True, markup=False, highlight=False)
    elif text is not None:
        out.file.write(text)
        out.file.flush()
    else:
        print_parts(out, render_rich(results, digits, grid, out.width))


class Command(Text):
    """A command meant to be copied: printed whole on its own line at any width (never cut or wrapped)."""


def print_parts(console: Console, group: Group) -> None:
    for part in group.renderables:
        console.print(part, soft_wrap=isinstance(part, Command))


def _plain(renderable) -> str:
    buf = io.StringIO()
    print_parts(Console(file=buf, width=200, no_color=True, highlight=False, markup=False), renderable)
    return buf.getvalue()


def _lines(report, d: int) -> list[tuple[str, list, str | None, bool]]:
    """The table's lines: (label, cells, style, ends a section); cells[0] is n."""
    from fmae.report.export import fmt, fmt_delta, mean_std

    lines = []
    for i, row in enumerate(report.rows):
        last = i == len(report.rows) - 1 and bool(report.paper)
        label = f"{row.label} {DEGENERATE_MARK}" if getattr(row, "degenerate", None) else row.label
        lines.append((label, [str(row.n), *(mean_std(row, c, d, "±") for c in report.columns)], None, last))
    for p in report.paper:
        lines.append((p.label, ["", *(fmt(p.values.get(c), d) for c in report.columns)], "dim", False))
    for row in (r for r in report.rows if r.delta_vs and r.n):
        cells = [Text(fmt_delta(row.delta.get(c), d), style="green" if (row.delta.get(c) or 0) >= 0 else "red")
                 for c in report.columns]
        lines.append((f"Δ {row.label} − paper {row.delta_vs}", ["", *cells], None, False))
    return lines


def _table(report, d: int, width: int) -> Table:
    """Groups as rows and AUs as columns; turned (AUs as rows) when that would not fit the terminal."""
    from fmae.report.export import column_title

    lines = _lines(report, d)
    heads = ["n", *map(column_title, report.columns)]
    widths = [max([len(h), *(len(str(cells[j])) for _, cells, _, _ in lines)]) for j, h in enumerate(heads)]
    label_width = max([5, *(len(label) for label, _, _, _ in lines)])
    table = Table(title=report.title, title_justify="left")
    if label_width + sum(w + 3 for w in widths) + 4 <= width or len(report.columns) == 1:
        table.add_column("group", overflow="fold")
        for h in heads:
            table.add_column(h, justify="right", no_wrap=True)
        for label, cells, style, end in lines:
            table.add_row(label, *cells, style=style, end_section=end)
        return table
    # Turned: AUs as rows. Published rows with an Avg. only become one line under the table.
    lines = [line for line in lines if not (line[2] == "dim" and all(c == "–" for c in line[1][1:-1]))]
    table.add_column("", no_wrap=True)
    for label, _, style, _ in lines:
        table.add_column(label, justify="right", overflow="fold", style=style)
    for j, h in enumerate(heads):
        table.add_row(h, *(cells[j] for _, cells, _, _ in lines), end_section=j == 0)
    return table


def render_rich(results, digits: int | None, grids: bool = True, width: int = 200) -> Group:
    """The report as Rich renderables: per benchmark a table (your rows, the paper's, Δ), notes, grids."""
    from fmae.report.export import default_digits, grid_symbol, retry_command

    parts: list = []
    for report in results.reports:
        d = default_digits(report) if digits is None else digits
        table = _table(report, d, width)
        parts.append(table)
        shown = {str(col.header) for col in table.columns}
        others = [p for p in report.paper if p.label not in shown and table.columns[0].header == ""]
        if others:
            parts.append(Text("other published Avg.: " + ", ".join(f"{p.label.removeprefix('paper: ')} "
                                                                   f"{p.values.get('avg', float('nan')):.{d}f}"
                                                                   for p in others)))
        if any(getattr(row, "degenerate", None) for row in report.rows):
            from fmae.metrics import DEGENERATE_LABEL

            parts.append(Text(f"{DEGENERATE_MARK} = a run of the row is {DEGENERATE_LABEL}"))
        parts.append(Text(f"{report.value_label} · {report.epoch_label}"))
        parts.append(Text(f"{report.how[0].upper()}{report.how[1:]}."))
        if report.paper:
            parts.append(Text(f"paper rows: {report.paper[0].metric_label} (%), as published"))
        for note in report.notes():
            parts.append(Text(f"note: {note}"))
        if grids:
            for g in report.grids:
                parts += _rich_grid(g, results.command_extra, grid_symbol, retry_command, width)
        parts.append(Text(""))
    if results.left_out:
        parts.append(Text("not in these tables: " + ", ".join(f"{n} {k}" for k, n in sorted(results.left_out.items()))))
    return Group(*parts)


def rich_grid_table(heads: list[str], rows: list[list[str]]) -> Table:
    """A completeness grid as Rich's default Table (what `grid_table` draws when it fits, and what a grid
    too wide for the terminal falls back to: Rich shrinks its columns)."""
    table = Table()
    table.add_column(heads[0], justify="right")
    for h in heads[1:]:
        table.add_column(h, justify="center")
    for r in rows:
        table.add_row(*r)
    return table


def grid_table(heads: list[str], rows: list[list[str]]) -> Text:
    """A completeness grid drawn as Rich draws a default Table of it (heavy head, the first column to the
    right, the others centred), line by line: Rich's layout measured and rendered each of the cells,
    which made the table output of 10,000 runs (40 grids of 84 seeds) cost twice the CSV."""
    from rich.cells import cell_len

    widths = [max(cell_len(c) for c in col) for col in zip(heads, *rows)]

    def line(cells: list[str], bar: str) -> str:
        out = []
        for j, (c, w) in enumerate(zip(cells, widths)):
            pad = w - cell_len(c)
            left = pad if j == 0 else pad // 2
            out.append(" " * (left + 1) + c + " " * (pad - left + 1))
        return bar + bar.join(out) + bar

    def rule(left: str, mid: str, right: str, fill: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    top, head = rule("┏", "┳", "┓", "━"), line(heads, "┃")
    text = Text("\n".join([top, head, rule("┡", "╇", "┩", "━"), *(line(r, "│") for r in rows),
                           rule("└", "┴", "┘", "─")]), no_wrap=True, overflow="ignore")
    text.stylize("table.header", len(top) + 1, len(top) + 1 + len(head))  # bold, as Rich's header row
    return text


def _rich_grid(g, extra, grid_symbol, retry_command, width: int) -> list:
    from fmae.report.export import inexact_note

    heads = ["seed", *(f"fold {f}" if f is not None else "run" for f in g.folds)]
    rows = [[str(s), *(grid_symbol(g.cells[(f, s)]) for f in g.folds)] for s in g.seeds]
    table: Table | Text = grid_table(heads, rows)
    if len(table.plain.partition("\n")[0]) > width:  # Rich's Table shrinks its columns to fit
        table = rich_grid_table(heads, rows)
    parts: list = [Text(f"completeness: {g.label} ({g.summary()})", no_wrap=True, overflow="ignore"), table]
    if g.to_add:
        parts.append(Text("queue the missing cells:"))
        parts += [Command(f"  {cmd}") for cmd in g.commands(extra)]
        if not g.exact:
            parts.append(Text(inexact_note(g)))
    retry = retry_command(g, extra)
    if retry:
        parts += [Text("retry the failed / cancelled ones (they resume from their last checkpoint):"),
                  Command(f"  {retry}")]
    return parts
