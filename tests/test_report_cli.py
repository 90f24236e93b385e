"""`fmae report` and fmae.report, continued from test_report.py (whose study and helpers it imports): every
export format, the CLI's printed table and its marks, and bad input."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import assert_one_line_error, read_csv, run_fmae
from fmae.report import Scoring, Selection, build
from fmae.report.export import render_csv, render_json, render_latex, render_markdown
from test_report import BP4D, DISFA, au_config, au_record, expected_au, new_run, rand_values, study  # noqa: F401 (study is a fixture)


# --- exports ------------------------------------------------------------------------------------------------

def test_csv_round_trips_and_json_holds_the_same_numbers(study):
    runs, _, _ = study
    results = build(runs, scoring=Scoring("f1_best"))
    back = read_csv(render_csv(results))
    groups = {(r["dataset"], r["group"], r["column"]): r for r in back if r["kind"] == "group"}
    deltas = {(r["dataset"], r["group"], r["column"]): r for r in back if r["kind"] == "delta"}
    seeds = {(r["dataset"], r["group"], r["runs"], r["column"]): r for r in back if r["kind"] == "seed"}
    paper = {(r["dataset"], r["vs"], r["column"]): r["mean"] for r in back if r["kind"] == "paper"}
    doc = json.loads(render_json(results))
    for report, jreport in zip(results.reports, doc["reports"]):
        for row, jrow in zip(report.rows, jreport["rows"]):
            assert jrow["group"] == row.label and jrow["n"] == row.n
            for c in report.columns:
                g = groups[(report.dataset, row.label, c)]
                assert (g["mean"], g["std"], g["n"]) == (row.mean[c], row.std[c], row.n)  # exact, not approx
                assert (jrow["mean"][c], jrow["std"][c]) == (row.mean[c], row.std[c])
                if row.delta_vs:
                    assert deltas[(report.dataset, row.label, c)]["mean"] == row.delta[c]
                for s in row.samples:
                    sample = seeds[(report.dataset, row.label, " ".join(s.runs), c)]
                    assert (sample["seed"], sample["mean"]) == (s.seed, s.values[c])
        for p in report.paper:
            for c, v in p.values.items():
                assert paper[(report.dataset, p.method, c)] == v
    assert all(r["value_label"] for r in back) and {r["epoch"] for r in back} == {"best", "as published"}


def test_markdown_and_latex(study):
    runs, truth, _ = study
    results = build(runs, Selection(datasets=("bp4d",)), Scoring("f1_best"))
    md = render_markdown(results)
    mean, std, _ = expected_au(truth[("fmae", "f1_best", "best")], BP4D)
    line = next(x for x in md.splitlines() if x.startswith("| vit_tiny fmae λ=0 |"))
    assert line == "| vit_tiny fmae λ=0 | 3 | " + " | ".join(f"{mean[c]:.1f} ± {std[c]:.1f}" for c in [*BP4D, "avg"]) + " |"
    assert "| paper: FMAE |  | 59.2 | 50.0 |" in md and "Δ vit_tiny fmae λ=0 − paper FMAE" in md
    assert f"| {mean['AU1']:.2f} ± {std['AU1']:.2f} |" in render_markdown(results, digits=2)
    assert "F1 best-threshold (tuned on test) (%)" in md and "### Completeness: vit_tiny fmae_iat λ=2" in md
    tex = render_latex(results)
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "booktabs" in tex
    report = results.reports[0]
    first = tex.split("\\end{table}")[0]  # the AU table (the probe's follows)
    body = [x for x in first.splitlines() if x.endswith("\\\\") and not x.startswith("Method")]
    for j, c in enumerate(report.columns):  # the best printed value of each column is bold, and only it
        values = [round(r.mean[c], 1) for r in report.rows] + [p.values[c] for p in report.paper if c in p.values]
        cells = [x.split(" & ")[2 + j] for x in body]
        bold = [cell for cell in cells if cell.startswith("\\textbf{")]
        assert bold and all(cell.startswith(f"\\textbf{{{max(values):.1f}}}") for cell in bold), (c, bold)
        assert len(bold) == values.count(max(values))
    if shutil.which("pdflatex") is None:
        return  # compile only where a TeX engine exists
    doc = "\\documentclass{article}\\usepackage[utf8]{inputenc}\\usepackage{booktabs}\\usepackage{graphicx}" \
          "\\begin{document}\n" + tex + "\n\\end{document}\n"
    folder = runs.parent / "tex"
    folder.mkdir(exist_ok=True)
    (folder / "t.tex").write_text(doc)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_cli_prints_a_labelled_table_and_writes_files_atomically(study, tmp_path):
    runs, _, _ = study
    result = run_fmae("report", "--runs-dir", runs, "--dataset", "bp4d", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for needle in ("BP4D — AU detection", "F1@0.5 (%)", "epoch: best", "paper: FMAE", "mean ± sample std over seeds",
                   "not like for like", "completeness: vit_tiny fmae_iat λ=2",
                   f"fmae queue add bp4d --folds 2,3 --seeds 3 --lambdas 0 --model vit_tiny --recipe fmae --epochs 2"
                   f" --runs-dir {runs}"):
        assert needle in text, needle
    assert "retry the failed" in text and "Traceback" not in result.stderr
    narrow = run_fmae("report", "--runs-dir", runs, "--dataset", "bp4d", cwd=tmp_path, env={"COLUMNS": "80"})
    table = [x for x in narrow.stdout.splitlines() if x[:1] in "┏┃┡│├└"]
    assert table and max(map(len, table)) <= 80  # turned: AUs as rows, so 80 columns suffice
    assert any(x.startswith("│ AU24 ") for x in table) and "other published Avg.: MDHR (CVPR'24) 66.6" in narrow.stdout
    out = tmp_path / "t.csv"
    result = run_fmae("report", "--runs-dir", runs, "-f", "csv", "--out", out, "--metric", "f1_best", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "" and "wrote" in result.stderr
    assert out.read_text() == render_csv(build(runs, scoring=Scoring("f1_best")))
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temp file left behind


# --- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--metric", "f2"], "--metric f2"),
    (["--by", "epoch"], "did you mean epochs"),
    (["--by", "seed"], "--by seed"),
    (["--threshold", "1.5"], "--threshold 1.5"),
    (["--threshold", "0.3", "--epoch", "last"], "--epoch best"),
    (["--metric", "auc", "--threshold", "per-au"], "AUC has no threshold"),
    (["--format", "pdf"], "--format pdf"),
    (["--vs", "Nobody"], "--vs Nobody"),
    (["--state", "finished"], "--state finished"),
    (["--dataset", "ck+"], "unknown dataset"),
])
def test_bad_options_are_one_line_errors(study, tmp_path, args, needle):
    runs, _, _ = study
    assert_one_line_error(run_fmae("report", "--runs-dir", runs, *args, cwd=tmp_path), needle)


def test_corrupt_and_half_written_folders_are_skipped_with_one_line_warnings(tmp_path):
    runs = tmp_path / "runs"
    rec = au_record(1, *({a: 0.5 for a in DISFA} for _ in range(3)))
    good = new_run(runs, au_config(1, 0, dataset="disfa"), "done", {"best": rec, "last": rec})
    bad = new_run(runs, au_config(2, 0, dataset="disfa"), "done", {"best": rec})
    bad.summary_path.write_text('{"best": {"epoch": 1, "f1_05": {"AU1": 0.5')  # cut off mid-write
    missing = new_run(runs, au_config(3, 0, dataset="disfa"), "done", {"best": {"epoch": 1, "accuracy": 0.3}})
    half = runs / "20260101-000000-disfa-f3-s1-l0-vit_tiny-beef"
    half.mkdir()
    (half / "run.toml").write_text('[config]\ntask = "au"\n')  # no status.json yet
    good.predictions.mkdir()
    (good.predictions / "best.npz").write_bytes(b"PK\x03\x04 not a zip")
    result = run_fmae("report", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: skipped ") for w in warnings), warnings
    assert any(bad.id in w and "summary.json: not valid JSON" in w for w in warnings)
    assert any(missing.id in w and "no per-AU 'f1_05'" in w for w in warnings)
    assert any(half.name in w and "no status.json" in w for w in warnings)
    assert "Traceback" not in result.stderr + result.stdout and "fold 1 of 3, seed 0: averaged over 1 of 3" in result.stdout
    rescore = build(runs, scoring=Scoring("f1", "best", "0.5"))
    assert any(good.id in line and "predictions/best.npz: unreadable" in line for line in rescore.skipped)
    assert_one_line_error(run_fmae("report", "--runs-dir", runs, "--strict", cwd=tmp_path), "--strict")
    for run in (good, missing):
        shutil.rmtree(run.path)
    assert_one_line_error(run_fmae("report", "--runs-dir", runs, cwd=tmp_path), "no training runs to report")


# --- the CLI's own marks (issue 15) -------------------------------------------------------------------------

def test_cli_prints_the_suggested_commands_whole_at_80_columns(study, tmp_path):
    runs, _, _ = study
    narrow = run_fmae("report", "--runs-dir", runs, "--dataset", "bp4d", cwd=tmp_path, env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    command = (f"  fmae queue add bp4d --folds 2,3 --seeds 3 --lambdas 0 --model vit_tiny --recipe fmae --epochs 2"
               f" --runs-dir {runs}")
    assert len(command) > 80 and command in narrow.stdout.splitlines()  # one line, not cut, not wrapped
    assert any(line.startswith("  fmae queue retry ") for line in narrow.stdout.splitlines())


def test_cli_marks_degenerate_rows_and_explains_the_mark(tmp_path):
    from fmae.cli.report import DEGENERATE_MARK
    from fmae.metrics import DEGENERATE_LABEL

    runs = tmp_path / "runs"
    rng = random.Random(7)
    for fold, threshold in ((1, 0.01), (2, 0.4), (3, 0.4)):
        rec = {**au_record(1, *(rand_values(rng, DISFA) for _ in range(3))), "best_threshold": threshold}
        new_run(runs, au_config(fold, 0, dataset="disfa"), "done", {"best": rec, "last": rec})
    for fold in (1, 2, 3):  # a second group (λ = 2) with nothing degenerate
        rec = {**au_record(1, *(rand_values(rng, DISFA) for _ in range(3))), "best_threshold": 0.5}
        new_run(runs, au_config(fold, 0, 2.0, dataset="disfa"), "done", {"best": rec, "last": rec})
    result = run_fmae("report", "--runs-dir", runs, cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ vit_tiny")]
    assert len(rows) == 2 and sum(DEGENERATE_MARK in r for r in rows) == 1
    assert f"{DEGENERATE_MARK} = a run of the row is {DEGENERATE_LABEL}" in result.stdout


def test_a_relative_export_goes_under_the_runs_folder_and_says_where(study, tmp_path):
    runs, _, _ = study
    work = tmp_path / "checkout"
    work.mkdir()
    result = run_fmae("report", "--runs-dir", runs, "-f", "latex", "-o", "t.tex", cwd=work)
    assert result.returncode == 0, result.stderr
    target = Path(runs) / "exports" / "t.tex"
    assert "\\begin{table}" in target.read_text() and f"wrote {target} (latex)" in result.stderr
    assert list(work.iterdir()) == []  # nothing loose in the folder the command ran in
    target.unlink()


def test_the_completeness_grid_is_drawn_as_rich_draws_the_table():
    """fmae report draws each grid line by line (Rich's layout of 13,000 cells was half the table
    output's time at 10,000 runs); the lines are the ones Rich's default Table gives."""
    import io

    from rich.console import Console

    from fmae.cli.report import grid_table, rich_grid_table

    heads = ["seed", "fold 1", "fold 2", "run"]
    rows = [["0", "✓ done", "✗ failed", "· missing"], ["12", "▶ running", "✓ done", "✓ done"]]
    table = rich_grid_table(heads, rows)

    def drawn(renderable) -> str:
        buf = io.StringIO()
        Console(file=buf, width=80, no_color=True, highlight=False, markup=False).print(renderable)
        return buf.getvalue()

    assert drawn(grid_table(heads, rows)) == drawn(table)
