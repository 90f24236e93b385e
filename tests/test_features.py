"""One tiny BP4D run, then what a reviewer asks of it: scored on DISFA's frames over the AUs the two share
(`fmae eval --dataset`, its own rows in `fmae report` and its own table on the Results screen), and the
t-SNE picture of its features with the silhouette score of each colouring (`fmae features`)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_fmae
from fmae.metrics import au_scores
from fmae.registry import get_dataset, shared_au_codes
from fmae.report import Scoring, build
from fmae_tui import prefs
from fmae_tui.app import create_app
from fmae_tui.screens.results import ResultsScreen
from fmae_tui.widgets.feature_scatter import find_points
from test_report import au_config, au_record, new_run, rand_values
from tui_support import screen_text, wait_until

TINY = ["--model", "vit_tiny", "--batch-size", "8", "--set", "input_size=32", "--set", "num_workers=0",
        "--set", "warmup_epochs=1", "--epochs", "1"]


def only_run(runs: Path, needle: str = "") -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir() and needle in p.name]
    return run


@pytest.fixture(scope="module")
def trained(make_synth, tmp_path_factory):
    runs = tmp_path_factory.mktemp("feat") / "runs"
    root = make_synth("bp4d")
    result = run_fmae("train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl", *TINY,
                      "--lambda-id", "0.5", "--runs-dir", runs)
    assert result.returncode == 0, result.stderr
    return runs, only_run(runs)


def test_cross_dataset_eval_scores_the_shared_aus_on_every_frame_and_reports_its_own_rows(trained, make_synth,
                                                                                          tmp_path):
    runs, run = trained
    disfa = make_synth("disfa")
    result = run_fmae("eval", run, "--dataset", "disfa", "--root", disfa, "--labels", disfa / "labels.jsonl",
                      "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "on every disfa frame over AU 1, 2, 4, 6, 12" in result.stdout
    ev = only_run(runs, "-on-disfa")
    pred = np.load(ev / "predictions" / "best.npz")
    assert list(pred["au_codes"]) == list(shared_au_codes("bp4d", "disfa")) == [1, 2, 4, 6, 12]
    labels = [json.loads(x) for x in (disfa / "labels.jsonl").read_text().splitlines() if x.strip()]
    assert len(pred["paths"]) == len(labels)  # every DISFA frame: all its subjects are unseen
    assert set(pred["subjects"]) == {x["img_path"].split("/")[0][-5:] for x in labels}
    summary = json.loads((ev / "summary.json").read_text())
    expect = au_scores(pred["probs"], pred["labels"]).to_dict([1, 2, 4, 6, 12])
    assert summary["best"]["f1_05"] == pytest.approx(expect["f1_05"], abs=1e-12)

    results = build(runs, scoring=Scoring("f1"))
    titles = [r.title for r in results.reports]
    assert titles == ["BP4D — AU detection", "BP4D → DISFA — AU detection, cross-dataset"]
    cross = results.reports[1]
    assert cross.columns == ["AU1", "AU2", "AU4", "AU6", "AU12", "avg"] and cross.paper == [] and cross.grids == []
    (row,) = cross.rows
    assert row.label.startswith("vit_tiny fmae λ=0.5 tested on disfa")
    assert row.mean["AU6"] == pytest.approx(expect["f1_05"]["AU6"] * 100)
    assert "evaluation runs (fmae eval)" not in results.left_out
    # the model's own benchmark keeps its rows, its columns and its grid
    assert len(results.reports[0].rows) == 1 and len(results.reports[0].columns) == 13

    refused = run_fmae("eval", run, "--dataset", "rafdb", "--runs-dir", runs, cwd=tmp_path)
    assert_one_line_error(refused, "rafdb", "two AU benchmarks")


def test_features_draw_the_test_frames_and_score_each_colouring(trained, tmp_path):
    _, run = trained
    # without --out: into the run folder, where the Run screen's Features tab looks, named by the colouring
    result = run_fmae("features", run, "--by", "au:12", "--max-frames", "12", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = run / "features" / "tsne-au12.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out} " in result.stdout
    assert find_points(run) == out.with_suffix(".csv") and list(tmp_path.iterdir()) == []
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 12 and list(rows[0])[:4] == ["x", "y", "subject", "path"] and "AU12" in rows[0]
    assert all(np.isfinite(float(r["x"])) and r["AU12"] in ("0", "1") for r in rows)
    assert "12 of 16 test frames of 2 subjects" in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert {"subject", "AU12"} <= set(lines)
    # the score printed is the silhouette of the printed colouring on the saved points' PCA features
    score = float(lines["subject"].split()[1])
    assert -1.0 <= score <= 1.0

    bad = run_fmae("features", run, "--by", "au:99", "--out", tmp_path / "x.png", cwd=tmp_path)
    assert_one_line_error(bad, "--by au:99", "1, 2, 4")
    assert not (tmp_path / "x.png").exists()


async def test_results_remembers_the_cross_dataset_table_and_its_pinned_row_apart_from_the_benchmarks(tmp_path):
    """BP4D's own table and BP4D → DISFA are both (bp4d, au): each keeps its own pinned row, and the one
    shown last is the one shown again."""
    runs, rng = tmp_path / "runs", random.Random(5)
    for on, aus in ((None, get_dataset("bp4d").au_names()), ("disfa", [f"AU{c}" for c in shared_au_codes("bp4d", "disfa")])):
        for lam, recipe in ((0.0, "fmae"), (2.0, "fmae_iat")):
            for fold in (1, 2, 3):
                values = rand_values(rng, aus)
                extra = {"eval_dataset": on} if on else {}
                new_run(runs, au_config(fold, 0, lam, recipe, **extra), "done",
                        {"task": "au", "best_epoch": 1, "best": au_record(1, values, values, values)})

    async def results(app, pilot) -> ResultsScreen:
        app.action_open("results")
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen.report is not None,
                         what="the tables")
        await pilot.pause()
        return app.screen

    async def pin(pilot, screen: ResultsScreen, label: str) -> None:
        (key,) = [k for k, row in screen._rows.items() if getattr(row, "label", None) == label]
        screen.table.move_cursor(row=screen.table.get_row_index(key))
        await pilot.press("b")
        await pilot.pause()

    app = create_app(runs_dir=runs)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await results(app, pilot)
        assert screen.report.title == "BP4D — AU detection"
        await pin(pilot, screen, "vit_tiny fmae λ=0")
        await pilot.press("tab")
        await pilot.pause()
        assert screen.report.title == "BP4D → DISFA — AU detection, cross-dataset"
        assert screen._baseline_row() is None  # BP4D's pin is not this table's
        await pin(pilot, screen, "vit_tiny fmae_iat λ=2 tested on disfa")
    assert prefs.load("results")["table"] == "bp4d→disfa/au"

    app = create_app(runs_dir=runs)  # reopened: the cross-dataset table, shown last, with its own pin
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await results(app, pilot)
        assert screen.report.title == "BP4D → DISFA — AU detection, cross-dataset"
        assert "the pinned ★ vit_tiny fmae_iat λ=2 tested on disfa" in " ".join(screen_text(app).split())
        await pilot.press("shift+tab")
        await pilot.pause()
        assert screen.report.title == "BP4D — AU detection"
        assert screen._baseline_row().label == "vit_tiny fmae λ=0"
        assert "the pinned ★ vit_tiny fmae λ=0" in " ".join(screen_text(app).split())
    assert prefs.load("results")["table"] == "bp4d/au"
