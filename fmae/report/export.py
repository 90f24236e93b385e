"""Results as text: Markdown, LaTeX (booktabs, the best value per column in bold), CSV (tidy, exact
floats: it reads back to the same numbers) and JSON. Pure functions of a `Results`; no torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from fmae.errors import FmaeError
from fmae.report.collect import GroupRow, Report, Results
from fmae.report.grid import SYMBOLS, Grid
from fmae.runs import plain_json

FORMATS = ("table", "md", "latex", "csv", "json")
CSV_FIELDS = ("dataset", "task", "kind", "group", "seed", "runs", "model", "recipe", "lambda_id", "probed", "by",
              "vs", "value_label", "epoch", "column", "mean", "std", "n")


def column_title(column: str) -> str:
    return {"avg": "Avg.", "top1": "top-1"}.get(column, column)


def fmt(value: float | None, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def fmt_delta(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def mean_std(row: GroupRow, column: str, digits: int, pm: str = " ± ") -> str:
    mean, std = row.mean.get(column), row.std.get(column)
    if mean is None:
        return "–"
    return fmt(mean, digits) + ("" if std is None else pm + fmt(std, digits))


def default_digits(report: Report) -> int:
    return 1 if report.task == "au" else 2


def _heading(report: Report) -> str:
    return f"{report.value_label} · {report.epoch_label}"


def grid_symbol(state: str) -> str:
    return f"{SYMBOLS[state]} {state}"


def retry_command(grid: Grid, extra: list[str]) -> str | None:
    import shlex

    return shlex.join(["fmae", "queue", "retry", *grid.retry, *extra]) if grid.retry else None


# --- Markdown -----------------------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(results: Results, digits: int | None = None, grids: bool = True) -> str:
    out: list[str] = []
    for report in results.reports:
        d = default_digits(report) if digits is None else digits
        out += [f"## {report.title}", "", f"{_heading(report)}  ", f"{report.how[0].upper()}{report.how[1:]}.", ""]
        header = ["group", "n", *map(column_title, report.columns)]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---", "--:"] + ["--:"] * len(report.columns)) + "|")
        for row in report.rows:
            out.append("| " + " | ".join([_md_escape(row.label), str(row.n),
                                          *(mean_std(row, c, d) for c in report.columns)]) + " |")
        for p in report.paper:
            out.append("| " + " | ".join([_md_escape(p.label), "", *(fmt(p.values.get(c), d) for c in report.columns)])
                       + " |")
        for row in report.rows:
            if row.delta_vs and row.n:
                out.append("| " + " | ".join([f"Δ {_md_escape(row.label)} − paper {row.delta_vs}", "",
                                              *(fmt_delta(row.delta.get(c), d) for c in report.columns)]) + " |")
        out.append("")
        if report.paper:
            out += [f"Paper rows: {report.paper[0].metric_label} (%), as published.", ""]
        out += [f"- {note}" for note in report.notes()] + ([""] if report.notes() else [])
        if grids:
            for grid in report.grids:
                out += _md_grid(grid, results.command_extra)
    if results.skipped:
        out += ["## Skipped run folders", ""] + [f"- {line}" for line in results.skipped] + [""]
    return "\n".join(out).rstrip() + "\n"


def _md_grid(grid: Grid, extra: list[str]) -> list[str]:
    out = [f"### Completeness: {grid.label} ({grid.summary()})", ""]
    folds = [f"fold {f}" if f is not None else "run" for f in grid.folds]
    out.append("| seed | " + " | ".join(folds) + " |")
    out.append("|--:|" + "|".join([":-:"] * len(folds)) + "|")
    for s in grid.seeds:
        out.append(f"| {s} | " + " | ".join(grid_symbol(grid.cells[(f, s)]) for f in grid.folds) + " |")
    out.append("")
    if grid.to_add:
        out += ["Queue the missing cells:", "", "```bash", *grid.commands(extra), "```", ""]
        if not grid.exact:
            out += [inexact_note(grid), ""]
    retry = retry_command(grid, extra)
    if retry:
        out += ["Retry the failed / cancelled ones (they resume from their last checkpoint):", "", "```bash", retry,
                "```", ""]
    return out


def inexact_note(grid: Grid) -> str:
    if grid.mixed:
        return (f"(the runs of this group differ in {', '.join(grid.mixed)}: check the command's --set values "
                "before running it)")
    return "(fmae.toml may resolve some settings differently from these runs: check with `--dry-run` first)"


# --- LaTeX ----------------------------------------------------------------------------------------------------

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "λ": r"$\lambda$", "–": "--",
        "±": r"$\pm$", "Δ": r"$\Delta$", "−": "--", "—": "---", "…": r"\dots{}", "·": r"$\cdot$"}


def tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def render_latex(results: Results, digits: int | None = None) -> str:
    """One booktabs table per report; the best (highest) value of each column is bold, ties included,
    compared as printed. Needs \\usepackage{booktabs}."""
    out = ["% fmae report — needs \\usepackage{booktabs}", ""]
    for report in results.reports:
        d = default_digits(report) if digits is None else digits
        shown: list[tuple[str, str, list[float | None], list[float | None]]] = []  # label, n, means, stds
        for row in report.rows:
            if not row.n:  # a group without a complete seed has no numbers for a paper table
                continue
            shown.append((tex(row.label), str(row.n), [row.mean.get(c) for c in report.columns],
                          [row.std.get(c) for c in report.columns]))
        paper_at = len(shown)
        for p in report.paper:
            shown.append((tex(f"{p.method} (paper" + ("" if p.venue == "ours" else f", {p.venue}") + ")"), "--",
                          [p.values.get(c) for c in report.columns], [None] * len(report.columns)))
        best = []
        for j in range(len(report.columns)):
            printed = [round(m[j], d) for _, _, m, _ in shown if m[j] is not None and not math.isnan(m[j])]
            best.append(max(printed) if printed else None)
        caption = (f"{report.title}: {report.value_label}, {report.epoch_label}; {report.how}. "
                   "Best value per column in bold.")
        label = f"tab:fmae-{report.dataset}-{report.task}".replace("_", "-")
        out += ["\\begin{table}[ht]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{3pt}",
                f"\\caption{{{tex(caption)}}}", f"\\label{{{label}}}",
                f"\\begin{{tabular}}{{lr{'c' * len(report.columns)}}}", "\\toprule",
                " & ".join(["Method", "$n$", *(tex(column_title(c)) for c in report.columns)]) + " \\\\", "\\midrule"]
        for i, (name, n, means, stds) in enumerate(shown):
            if i == paper_at and i > 0:
                out.append("\\midrule")
            cells = []
            for j, (m, s) in enumerate(zip(means, stds)):
                if m is None or math.isnan(m):
                    cells.append("--")
                    continue
                text = fmt(m, d)
                if best[j] is not None and round(m, d) == best[j]:
                    text = f"\\textbf{{{text}}}"
                cells.append(text + ("" if s is None else f"\\,{{\\scriptsize $\\pm$ {fmt(s, d)}}}"))
            out.append(" & ".join([name, n, *cells]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


# --- CSV -------------------------------------------------------------------------------------------------------

def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_csv(results: Results) -> str:
    """Tidy CSV, one value a line. kind: group (mean ± std over n), seed (one seed's value in `mean`, the
    runs it averages in `runs`),
    paper (as published), delta (group − the paper method in `vs`). Floats are written exactly."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    epoch = results.scoring.epoch
    for report in results.reports:
        base = {"dataset": report.dataset, "task": report.task, "value_label": report.value_label, "epoch": epoch}
        for row in report.rows:
            f = dict(row.fields)
            known = {"model", "recipe", "lambda_id", "probed"}
            ident = {**base, "group": row.label, "model": f.get("model"), "recipe": f.get("recipe") or "",
                     "lambda_id": _num(f.get("lambda_id")), "probed": f.get("probed") or "",
                     "by": ";".join(f"{k}={v}" for k, v in row.fields if k not in known)}
            for c in report.columns:
                w.writerow({**ident, "kind": "group", "column": c, "mean": _num(row.mean.get(c)),
                            "std": _num(row.std.get(c)), "n": row.n})
            for s in row.samples:
                for c in report.columns:
                    w.writerow({**ident, "kind": "seed", "seed": s.seed, "runs": " ".join(s.runs), "column": c,
                                "mean": _num(s.values.get(c)), "n": len(s.runs)})
            if row.delta_vs and row.n:
                for c in report.columns:
                    w.writerow({**ident, "kind": "delta", "vs": row.delta_vs, "column": c,
                                "mean": _num(row.delta.get(c))})
        for p in report.paper:
            for c in report.columns:
                if c in p.values:
                    w.writerow({**base, "kind": "paper", "group": p.label, "vs": p.method, "column": c,
                                "mean": _num(p.values[c]), "value_label": f"{p.metric_label} (%)",
                                "epoch": "as published"})
    return buf.getvalue()


# --- JSON ------------------------------------------------------------------------------------------------------

def render_json(results: Results) -> str:
    return json.dumps(plain_json(results.to_dict()), indent=1, ensure_ascii=False, allow_nan=False) + "\n"



# --- by name ------------------------------------------------------------------------------------------------

EXTENSIONS = {".md": "md", ".tex": "latex", ".csv": "csv", ".json": "json"}


def render(results: Results, fmt: str, digits: int | None = None, grids: bool = True) -> str:
    """The results as one of the file formats (md, latex, csv, json)."""
    renderers = {"md": lambda: render_markdown(results, digits, grids), "latex": lambda: render_latex(results, digits),
                 "csv": lambda: render_csv(results), "json": lambda: render_json(results)}
    if fmt not in renderers:
        raise FmaeError(f"format {fmt}: choose {', '.join(renderers)}")
    return renderers[fmt]()


def format_for(path: str) -> str:
    """The file format a file name asks for, by its extension."""
    import os

    ext = os.path.splitext(str(path))[1].lower()
    if ext not in EXTENSIONS:
        raise FmaeError(f"{path}: end the file name with {', '.join(EXTENSIONS)} to choose the format")
    return EXTENSIONS[ext]


EXPORTS_FOLDER = "exports"  # under the runs folder: exports stay with the runs they describe, out of git


def export_path(runs_dir: Path, out: Path | str) -> Path:
    """Where an export named `out` is written: an absolute path as given; a relative one (`t.tex`,
    `paper/t.tex`) under `<runs folder>/exports/`, never loose in the current folder (a source checkout).
    The app's export and `fmae report --out` both resolve through here."""
    out = Path(out).expanduser()
    return out if out.is_absolute() else Path(runs_dir) / EXPORTS_FOLDER / out


def default_export_name(dataset: str | None, fmt: str = "md") -> str:
    ext = {v: k for k, v in EXTENSIONS.items()}[fmt]
    return f"results-{dataset}{ext}" if dataset else f"results{ext}"
