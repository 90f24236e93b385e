"""summary.json through `fmae.summary.Summary`: the summaries the release before the type wrote (fixtures,
one per task, made by that trainer) read back field by field, write back byte for byte, and every reader
(the report, the app's headline) gives the numbers they hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmae.metric_catalogue import METRICS, REPORT_METRICS
from fmae.report.scoring import RunRef, Scoring, score_run
from fmae.runs import RunDir, list_runs
from fmae.summary import Summary
from fmae_tui.run_kind import headline, is_degenerate

FIXTURES = Path(__file__).parent / "fixtures" / "summaries"
TASKS = ("au", "fer", "id_probe", "pretrain")


def fixture(task: str) -> dict:
    return json.loads((FIXTURES / f"{task}.json").read_text())


@pytest.mark.parametrize("task", TASKS)
def test_a_summary_of_the_previous_release_round_trips_exactly(task):
    data = fixture(task)
    summary = Summary.from_json(data)
    assert summary.task == data["task"] and summary.metric == data["metric"] and summary.extra == {}
    assert summary.best_epoch == data["best_epoch"] and summary.epochs_done == data["epochs_done"]
    assert list(summary.to_json()) == list(data)  # the same keys in the same order
    assert json.dumps(summary.to_json(), indent=1) == json.dumps(data, indent=1)
    assert summary.metric in METRICS  # every task's selection metric has a catalogue entry


def test_the_headline_is_the_best_value_or_for_pretraining_the_last_loss():
    au = Summary.from_json(fixture("au"))
    assert au.headline() == (fixture("au")["best_value"], 1)
    assert headline(fixture("au")) == (fixture("au")["best_value"], "F1 best-thr")
    assert is_degenerate(fixture("au")) is fixture("au")["degenerate"]
    pre = fixture("pretrain")
    assert Summary.from_json(pre).headline() == (pre["last"]["loss"], 1)
    assert headline(pre) == (pre["last"]["loss"], "loss") and not METRICS["loss"].higher_is_better


def test_odd_and_unknown_keys_are_tolerated_and_kept():
    odd = {"best_value": "0.5", "best": [1, 2], "last": {"epoch": 2, "loss": 1.0}, "metric": "loss",
           "fold": True, "written_by": "a newer fmae"}
    summary = Summary.from_json(odd)
    assert summary.best_value is None and summary.best is None and summary.fold is None
    assert summary.headline() == (1.0, 2)
    assert summary.to_json()["written_by"] == "a newer fmae"


def test_the_report_scores_a_previous_release_summary(tmp_path):
    data = fixture("au")
    config = {k: data[k] for k in ("task", "dataset", "fold", "seed", "model", "recipe", "lambda_id")}
    run = RunDir.create(tmp_path, data["run_id"], config, {"command": ["test"]})
    run.write_summary(data)
    run.update_status(state="done")
    (info,) = list_runs(tmp_path)
    ref = RunRef(info, "au", "bp4d", data["fold"], data["seed"], ())
    for name, m in REPORT_METRICS.items():
        score = score_run(ref, Scoring(metric=name))
        assert score.values == data["best"][m.per_au]
        assert score.epoch == 1 and score.source == "summary.json (best)"
    assert score_run(ref, Scoring(metric="f1_best")).threshold == data["best"]["best_threshold"]


def test_a_best_threshold_no_better_than_every_au_present_is_degenerate():
    from fmae.summary import degenerate_scores

    # the walk's runs: a mid-grid threshold whose F1 is exactly the all-positive F1 (every probability above it)
    assert degenerate_scores(0.13, 0.4991, 0.4991) is True
    assert degenerate_scores(0.01, 0.6, 0.4991) is True  # the grid's edge, whatever the F1
    assert degenerate_scores(0.30, 0.5981, 0.4991) is False  # the demo's run: it learned
    assert degenerate_scores(0.30, 0.5981, None) is False  # an older summary without the floor
    assert degenerate_scores(0.30, float("nan"), 0.4991) is False
