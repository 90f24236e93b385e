"""Results over runs, torch-free (the app imports it):

    scoring.py   what to score (`Scoring`) and one run's numbers (`score_run`, from summary.json or predictions)
    rows.py      `aggregate`: folds averaged within a seed, mean ± std over seeds, partial rows
    grid.py      the (fold, seed) completeness grid and the matrices that queue its missing cells
    paper.py     the published numbers (`paper_results.csv`, shipped beside it)
    collect.py   `collect` and `build`: runs selected, scored, aggregated, the paper beside them
    export.py    Markdown, LaTeX, CSV and JSON

`from fmae.report import Scoring, Selection, build` is the entry point the CLI and the app use.
"""

from fmae.report.collect import GroupRow, Report, Results, Scoring, Selection, build, collect

__all__ = ["GroupRow", "Report", "Results", "Scoring", "Selection", "build", "collect"]
