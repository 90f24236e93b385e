"""What a run tells its user while and after it trains (issue 15): the warmup warning, the all-positive F1
and the degenerate flag in summary.json and at the end of `fmae train`, and progress refreshed by time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_fmae
from fmae.metrics import DEGENERATE_LABEL, all_positive_f1, degenerate_threshold
from fmae.run_config import config_warnings

TINY = {"model": "vit_tiny", "batch_size": 4, "input_size": 32, "num_workers": 0, "epochs": 1}


def test_warmup_warning_names_the_numbers():
    assert config_warnings({"epochs": 20, "warmup_epochs": 2}) == []
    assert config_warnings({"epochs": 4, "warmup_epochs": 1.9}) == []
    [whole] = config_warnings({"epochs": 2, "warmup_epochs": 2}, steps_per_epoch=12)
    assert whole.startswith("warmup 2 epochs = 24 of 24 steps: the lr never leaves warmup")
    [most] = config_warnings({"epochs": 3, "warmup_epochs": 2})
    assert most.startswith("warmup 2 of 3 epochs (67% of the steps): the lr reaches its peak only after 67%")
    assert "--set warmup_epochs" in most


def test_dry_run_warns_about_a_warmup_that_eats_the_run(make_synth, tmp_path):
    root = make_synth("bp4d")
    result = run_fmae("train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl",
                      "--model", "vit_tiny", "--epochs", "1", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the recipe's 2 warmup epochs, capped at the run's 1
    assert "warning: warmup 1 of 1 epoch (100% of the steps): the lr never leaves warmup" in result.stderr
    quiet = run_fmae("train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl",
                     "--model", "vit_tiny", "--epochs", "10", "--dry-run", cwd=tmp_path)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


def _tiny_run(tmp_path: Path, root: Path, **cli):
    from fmae.config import load_project
    from fmae.run_config import create_run, resolve_run_config

    (tmp_path / "fmae.toml").write_text('runs_dir = "runs"\n')
    project = load_project(tmp_path / "fmae.toml")
    resolved = resolve_run_config(project, "bp4d", fold=1, cli={**TINY, **cli}, root=root, labels=root / "labels.jsonl")
    return create_run(project.runs_dir, resolved)


def _train_steps(run) -> list[int]:
    lines = run.metrics_path.read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize("every_s,expected", [(1e9, "first and last"), (0.0, "every step")])
def test_train_records_and_heartbeats_come_by_time_and_after_the_first_step(make_synth, tmp_path, monkeypatch,
                                                                           every_s, expected):
    from fmae.train import trainer

    monkeypatch.setattr(trainer, "LIVE_EVERY_S", every_s)
    run = _tiny_run(tmp_path, make_synth("bp4d"), log_every=1000)
    assert trainer.execute(run.path, quiet=True) == 0
    status = run.read_status()
    steps = status["total_steps"]
    assert steps > 2 and status["step"] == steps
    # log_every = 1000 would give no record before the epoch's end; the first step is logged at once and,
    # with LIVE_EVERY_S = 0, every step is (its clock always ran past the limit)
    assert _train_steps(run) == ([1, steps] if expected == "first and last" else list(range(1, steps + 1)))


def test_summary_holds_the_all_positive_f1_and_the_degenerate_flag(make_synth, tmp_path):
    root = make_synth("bp4d")
    result = run_fmae("train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl",
                      "--model", "vit_tiny", "--batch-size", "4", "--set", "input_size=32", "--set", "num_workers=0",
                      "--epochs", "1", "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    labels = np.load(run / "predictions" / "best.npz")["labels"]
    p = labels.mean(axis=0)
    assert summary["f1_all_positive_mean"] == pytest.approx(float(np.mean(2 * p / (1 + p))), abs=1e-12)
    assert summary["f1_all_positive_mean"] == pytest.approx(all_positive_f1(labels))
    best = summary["best"]
    assert best["degenerate"] is degenerate_threshold(best["best_threshold"]) is summary["degenerate"]
    # the end of `fmae train`: the numbers, each named, beside the floor they must clear
    line = next(x for x in result.stdout.splitlines() if "F1@0.5" in x)
    assert f"all-positive F1 {summary['f1_all_positive_mean']:.3f}" in line and "AUC" in line
    assert "(tuned on test)" in line
    assert (DEGENERATE_LABEL in result.stdout) is best["degenerate"]
    # and train.log's per-epoch line puts the same floor beside F1@0.5
    epoch_line = next(x for x in (run / "train.log").read_text().splitlines() if "test epoch 1:" in x)
    assert f"F1@0.5 {best['f1_05_mean']:.4f} (all-positive F1 {summary['f1_all_positive_mean']:.4f})" in epoch_line


def test_train_log_warns_with_the_steps(make_synth, tmp_path):
    from fmae.train import trainer

    run = _tiny_run(tmp_path, make_synth("bp4d"), warmup_epochs=1)
    assert trainer.execute(run.path, quiet=True) == 0
    steps = run.read_status()["total_steps"]
    log = run.log_path.read_text()
    assert f"WARNING warmup 1 epoch = {steps} of {steps} steps: the lr never leaves warmup" in log


def test_all_positive_f1_is_2p_over_1_plus_p():
    labels = np.array([[1, 0], [1, 0], [0, 0], [1, 1]])
    assert all_positive_f1(labels) == pytest.approx((2 * 0.75 / 1.75 + 2 * 0.25 / 1.25) / 2)


def test_the_degenerate_line_at_the_end_of_fmae_train_prints_no_markup(capsys):
    """`fmae train`'s console reads no markup (values and paths hold `[`): the line is its text alone."""
    from fmae.cli.train import _print_outcome
    from fmae.summary import Summary

    data = json.loads((Path(__file__).parent / "fixtures" / "summaries" / "au.json").read_text())
    data["best"]["degenerate"] = data["degenerate"] = True
    _print_outcome(Summary.from_json(data))
    printed = capsys.readouterr().out
    assert f"{DEGENERATE_LABEL} — this run has not learnt to tell the AUs apart" in printed
    assert "[yellow]" not in printed and "[/]" not in printed
