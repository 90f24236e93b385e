"""Run folders written by the release before the typed run config (tests/fixtures/old_runs, made by
that release's own commands, checkpoints stripped; see tests/fixtures/old_runs/README.md) still list,
report, re-score, plan against, train and evaluate with today's code.

The fixture's paths name /tmp/fmae-old-runs(-data); the copy here points them at this session's
synthetic data (made with the same options, so the same images and labels).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_fmae

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_runs"
OLD_DATA, OLD_RUNS = "/tmp/fmae-old-runs-data", "/tmp/fmae-old-runs"
AU_F1 = "20261202-002439-bp4d-f1-s0-l0-vit_tiny-fa52"
AU_F2 = "20261202-002536-bp4d-f2-s0-l0-vit_tiny-d7d4"  # queued, run by the scheduler
AU_F3 = "20261202-002536-bp4d-f3-s0-l0-vit_tiny-0d04"  # queued, then cancelled before it started
AU_QUEUED = "20261202-002609-bp4d-f1-s1-l0-vit_tiny-9b83"
PROBE = "20261202-002449-idprobe-bp4d-s0-vit_tiny-0db2"
PRETRAIN = "20261202-002501-pretrain-train-s0-vit_tiny-6ea6"
FER = "20261202-002516-rafdb-s0-vit_tiny-ad1f"
TINY = {"model": "vit_tiny", "epochs": 1, "batch_size": 8, "input_size": 32, "num_workers": 0}


@pytest.fixture
def old_runs(make_synth, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FMAE_NO_AUTOSTART", "1")
    bp4d, rafdb = make_synth("bp4d"), make_synth("rafdb")
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURE, runs, ignore=shutil.ignore_patterns("README.md"))
    for toml in runs.glob("*/run.toml"):
        text = toml.read_text(encoding="utf-8")
        text = text.replace(f"{OLD_DATA}/bp4d", str(bp4d)).replace(f"{OLD_DATA}/rafdb", str(rafdb))
        toml.write_text(text.replace(OLD_RUNS, str(runs)), encoding="utf-8")
    return runs


def test_old_run_folders_list_report_rescore_and_dedupe(old_runs, make_synth):
    from fmae.config import load_project
    from fmae.queue_ops import cell_label, plan_matrix
    from fmae.runs import list_runs

    listed = {info.id: (info.config["task"], info.state) for info in list_runs(old_runs)}
    assert listed == {AU_F1: ("au", "done"), AU_F2: ("au", "done"), AU_F3: ("au", "cancelled"),
                      AU_QUEUED: ("au", "queued"), PROBE: ("id_probe", "done"),
                      PRETRAIN: ("pretrain", "done"), FER: ("fer", "done")}

    def report(*args: str) -> dict:
        out = run_fmae("report", "--runs-dir", old_runs, "--format", "json", *args)
        assert out.returncode == 0, out.stderr
        return {(r["dataset"], r["task"]): r for r in json.loads(out.stdout)["reports"]}

    scored = report()
    au = scored[("bp4d", "au")]
    assert [row["group"] for row in au["rows"]] == ["vit_tiny fmae λ=0 · folds 1–2 of 3, seed 0"]
    assert au["rows"][0]["mean"]["avg"] == pytest.approx(29.55880924630924, abs=1e-9)  # F1@0.5, as made
    assert scored[("rafdb", "fer")]["rows"][0]["mean"]["top1"] == pytest.approx(42.10526315789473, abs=1e-9)
    assert scored[("bp4d", "id_probe")]["rows"][0]["mean"]["top1"] == 0.0
    rescored = report("--threshold", "0.4")[("bp4d", "au")]  # from predictions/best.npz
    assert rescored["rows"][0]["mean"]["avg"] == pytest.approx(47.23165355024735, abs=1e-9)
    (grid,) = rescored["grids"]
    assert grid["counts"] == {"done": 2, "running": 0, "queued": 1, "failed": 0, "cancelled": 1, "missing": 2}
    assert grid["queue_commands"] == [
        "fmae queue add bp4d --folds 2,3 --seeds 1 --lambdas 0 --model vit_tiny --recipe fmae --epochs 1 "
        f"--set batch_size=8 --set input_size=32 --runs-dir {old_runs}"]

    # The study half-run before the change: its done and queued cells (queue rows holding the keys of the
    # old release, folders read from run.toml) are recognised; the cancelled and missing ones are added.
    bp4d = make_synth("bp4d")
    plan = plan_matrix(load_project(None, old_runs), "bp4d", folds=[1, 2, 3], seeds=[0, 1], cli=TINY,
                       root=bp4d, labels=bp4d / "labels.jsonl", gpus_per_run=0)
    assert [cell_label(c.values) for c in plan.to_add] == ["fold 3 seed 0 λ 0", "fold 2 seed 1 λ 0",
                                                           "fold 3 seed 1 λ 0"]
    assert {cell_label(c.values): why for c, why in plan.skipped} == {
        "fold 1 seed 0 λ 0": f"{AU_F1} (done)", "fold 2 seed 0 λ 0": f"{AU_F2} (done)",
        "fold 1 seed 1 λ 0": f"{AU_QUEUED} (queued)"}


def test_an_old_queued_run_trains_and_evaluates(old_runs):
    run = old_runs / AU_QUEUED
    trained = run_fmae("exec", run)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["epoch"] == 1 and 0.0 <= summary["best"]["f1_05_mean"] <= 1.0

    evaluated = run_fmae("eval", run, "--runs-dir", old_runs / "eval")
    assert evaluated.returncode == 0, evaluated.stderr
    (ev,) = [p for p in (old_runs / "eval").iterdir() if p.is_dir()]
    rec = [json.loads(x) for x in (ev / "metrics.jsonl").read_text().splitlines()][-1]
    assert rec["f1_best_mean"] == pytest.approx(summary["best"]["f1_best_mean"], abs=1e-12)


def test_queue_missing_clones_the_old_group_into_its_missing_cells(old_runs):
    from fmae.config import load_project
    from fmae.report import build
    from fmae.runs import RunDir
    from fmae.study import queue_missing

    project = load_project(None, old_runs)
    (grid,) = [g for r in build(old_runs, project=project).reports for g in r.grids if g.task == "au"]
    plans, jobs = queue_missing(project, grid)
    assert [p.summary()[0] for p in plans] == ["bp4d matrix: folds 2,3 × seeds 1 × λ 0 = 2 cell(s): 2 to add, 0 skipped"]
    template = RunDir(old_runs / AU_QUEUED).read_config()  # the group's newest run
    for job, fold in zip(jobs, (2, 3)):
        cfg = RunDir(job.path).read_config()
        assert (cfg["fold"], cfg["seed"]) == (fold, 1)
        assert {k: v for k, v in cfg.items() if k not in ("fold", "global_pool")} == \
            {k: v for k, v in template.items() if k not in ("fold", "global_pool")}
    again, more = queue_missing(project, grid)  # the same cells again: queued now, so skipped
    assert more == [] and [len(p.skipped) for p in again] == [2]
