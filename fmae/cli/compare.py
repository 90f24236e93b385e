"""`fmae compare A B`: is group A really better than group B, or is it fold and seed noise?

The numbers come from `fmae.report.compare.compare_groups` (the app's Results call `compare_rows` for the
pinned baseline); this module parses the options and prints one table per metric, or JSON.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from fmae.cli.common import ConfigOpt, RunsDirOpt, out
from fmae.errors import FmaeError

app = typer.Typer()

_STYLE = {"better": "green", "worse": "red", "within noise": "dim"}


@app.command("compare")
def compare_cmd(
    a: Annotated[str, typer.Argument(help="Group A, as `fmae report` names its row, e.g. 'vit_base fmae_iat λ=2' (lambda=2 works too); the benchmark may go first.")],
    b: Annotated[str, typer.Argument(help="Group B, the baseline (Δ = A − B).")],
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", "-d", help="Only this benchmark (when a group name exists on several).")] = None,
    by: Annotated[Optional[list[str]], typer.Option("--by", help="Group by this config key too, as `fmae report --by` (repeatable).")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Only runs carrying this tag (repeatable).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="Comma-separated: f1 (F1@0.5), f1_best (F1 at the best threshold, tuned on test), auc.")] = "f1,f1_best,auc",
    draws: Annotated[int, typer.Option("--draws", help="Bootstrap draws over test subjects.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the bootstrap and the permutation sample.")] = 0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Paired comparison of two groups over the (fold, seed) cells both hold: per-AU and mean Δ with a 95 %
    bootstrap interval over test subjects, a sign-flip permutation test over the cells, and a verdict."""
    from fmae.config import load_project
    from fmae.report.compare import compare_groups

    if fmt not in ("table", "json"):
        raise FmaeError(f"--format {fmt}: choose table or json")
    project = load_project(config, runs_dir)
    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    result = compare_groups(project.runs_dir, a, b, datasets=dataset or (), by=by or (), tags=tag or (),
                            metrics=metrics, draws=draws, seed=seed)
    if fmt == "json":
        out.print(json.dumps(result.to_dict(), indent=1, ensure_ascii=False), soft_wrap=True)
        return
    folds = sorted({f for f, _ in result.cells if f is not None})
    seeds = sorted({s for _, s in result.cells})
    out.print(f"A = {result.a}\nB = {result.b}", soft_wrap=True)
    cells = f"{len(result.cells)} paired cell" + ("" if len(result.cells) == 1 else "s")
    out.print(f"{cells} (folds {','.join(map(str, folds))} × seeds {','.join(map(str, seeds))}); "
              f"95% interval: bootstrap over the {result.subjects} test subjects ({result.draws:,} draws); "
              f"p: sign-flip permutation test over the cells "
              f"({'all ' if result.exact else ''}{result.permutations:,} sign patterns); "
              "verdict: better / worse when the interval excludes 0 and p < 0.05", soft_wrap=True)
    for m in result.metrics:
        out.print(_table(m, result))
    for note in result.notes:
        out.print(f"note: {note}", soft_wrap=True)


def _table(m, result) -> Table:
    table = Table(title=f"{m.label} (%) — Δ = A − B in points", title_justify="left")
    for name in ("", "A", "B", "Δ", "95% interval", "p", "verdict"):
        table.add_column(name, justify="left" if name in ("", "verdict") else "right")

    def fmt(x, sign=False):
        return "–" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")

    for col in m.columns:
        verdict = m.verdict[col]
        interval = "–" if m.low[col] is None else f"[{m.low[col]:+.2f}, {m.high[col]:+.2f}]"
        p = "–" if m.p[col] is None else f"{m.p[col]:.3f}"
        table.add_row(col, fmt(m.a[col]), fmt(m.b[col]), fmt(m.delta[col], True), interval, p,
                      Text(verdict, style=_STYLE[verdict]))
    return table
