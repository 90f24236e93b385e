"""`fmae report` and fmae.report: tables averaged over folds then seeds, checked to the last digit against
an independent computation; the paper beside them; re-scoring saved predictions; the completeness grid
and its queue command (run through the real queue); a real tiny run. Exports, the CLI's output and bad input
are in test_report_cli.py, which imports this file's helpers."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shlex
import statistics
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conftest import run_fmae
from fmae.metrics import au_scores
from fmae.report.paper import paper_rows
from fmae.registry import get_dataset
from fmae.report import Scoring, Selection, build
from fmae.runs import RunDir, make_run_id

BP4D = get_dataset("bp4d").au_names()
DISFA = get_dataset("disfa").au_names()
_CLOCK = itertools.count()
KEYS = {"f1": "f1_05", "f1_best": "f1_best", "auc": "auc"}


# --- run folders with known numbers -------------------------------------------------------------------------

def new_run(runs: Path, config: dict, state: str = "done", summary: dict | None = None, tags=()) -> RunDir:
    """A real run folder (fmae.runs), its ids one second apart so that id order is creation order."""
    when = datetime(2026, 1, 1) + timedelta(seconds=next(_CLOCK))
    task = {"au": "train", "fer": "train", "id_probe": "idprobe"}.get(config["task"], config["task"])
    run_id = make_run_id(config["dataset"], config["model"], config["seed"], task=task,
                         fold=config.get("fold") if config["task"] == "au" else None,
                         lambda_id=config.get("lambda_id") if config["task"] == "au" else None, now=when)
    run = RunDir.create(runs, run_id, config, {"command": ["test"]})
    if summary is not None:
        run.write_summary({"run_id": run_id, **summary})
    if tags:
        run.write_tags(list(tags))
    if state != "queued":
        run.update_status(state=state)
    return run


def au_config(fold, seed, lam=0.0, recipe="fmae", dataset="bp4d", **extra) -> dict:
    return {**dict(task="au", dataset=dataset, fold=fold, seed=seed, lambda_id=lam, model="vit_tiny", recipe=recipe,
                   epochs=2), **extra}


def rand_values(rng: random.Random, aus) -> dict[str, float]:
    return {a: round(rng.uniform(0.2, 0.95), 4) for a in aus}


def au_record(epoch: int, f1_05: dict, f1_best: dict, auc: dict) -> dict:
    return {"split": "test", "epoch": epoch, "f1_05": f1_05, "f1_05_mean": statistics.fmean(f1_05.values()),
            "f1_best": f1_best, "f1_best_mean": statistics.fmean(f1_best.values()), "best_threshold": 0.37,
            "auc": auc, "auc_mean": statistics.fmean(v for v in auc.values() if v is not None)}


def expected_au(per_fold_by_seed: dict[int, dict[int, dict[str, float]]], aus) -> tuple[dict, dict, int]:
    """Independently: per seed each AU's mean over folds (×100), avg over AUs; then mean and stdev over seeds."""
    seeds = []
    for seed, folds in sorted(per_fold_by_seed.items()):
        per_au = {a: sum(folds[f][a] for f in folds) / len(folds) * 100 for a in aus}
        per_au["avg"] = sum(per_au[a] for a in aus) / len(aus)
        seeds.append(per_au)
    cols = [*aus, "avg"]
    mean = {c: statistics.mean(s[c] for s in seeds) for c in cols}
    std = {c: statistics.stdev(s[c] for s in seeds) if len(seeds) > 1 else None for c in cols}
    return mean, std, len(seeds)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """bp4d: FMAE (λ 0) 3 seeds × 3 folds + an incomplete seed 3 + an older duplicate; FMAE-IAT (λ 2)
    2 seeds done and seed 2 running / queued / failed; RAF-DB FER 3 seeds; identity probes of both
    groups; one pretraining and one `fmae eval` run (left out). `truth` holds what was written."""
    runs = tmp_path_factory.mktemp("study") / "runs"
    rng = random.Random(7)
    truth: dict = {}
    ids: dict = {}

    def au_run(group, fold, seed, lam, recipe, state="done", keep=True):
        best = {m: rand_values(rng, BP4D) for m in KEYS}
        last = {m: rand_values(rng, BP4D) for m in KEYS}
        summary = {"task": "au", "best_epoch": 2, "best": au_record(2, best["f1"], best["f1_best"], best["auc"]),
                   "last": au_record(3, last["f1"], last["f1_best"], last["auc"])}
        run = new_run(runs, au_config(fold, seed, lam, recipe), state, summary)
        if keep:
            for epoch, rec in (("best", best), ("last", last)):
                for m in KEYS:
                    truth.setdefault((group, m, epoch), {}).setdefault(seed, {})[fold] = rec[m]
        ids.setdefault(group, {})[(fold, seed)] = run.id
        return run

    ids["dup"] = au_run("fmae", 1, 0, 0.0, "fmae", keep=False).id  # older: replaced by the next one
    for seed in (0, 1, 2):
        for fold in (1, 2, 3):
            au_run("fmae", fold, seed, 0.0, "fmae")
    extra = au_run("fmae", 1, 3, 0.0, "fmae", keep=False)  # seed 3 has fold 1 only
    truth["fmae seed3 fold1"] = json.loads(extra.summary_path.read_text())["best"]
    for seed in (0, 1):
        for fold in (1, 2, 3):
            au_run("iat", fold, seed, 2.0, "fmae_iat")
    for fold, state in ((1, "running"), (2, "queued"), (3, "failed")):
        au_run("iat", fold, 2, 2.0, "fmae_iat", state=state, keep=False)
    for seed in (0, 1, 2):
        acc = round(rng.uniform(0.8, 0.95), 4)
        truth.setdefault("rafdb", []).append(acc)
        new_run(runs, dict(task="fer", dataset="rafdb", fold=0, seed=seed, lambda_id=0.0, model="vit_tiny",
                           recipe="fmae", epochs=2),
                summary={"task": "fer", "best": {"epoch": 2, "accuracy": acc}, "last": {"epoch": 2, "accuracy": acc}})
    for group, source in (("fmae", ids["fmae"][(1, 0)]), ("fmae", ids["fmae"][(2, 0)]),
                          ("iat", ids["iat"][(1, 0)]), ("iat", ids["iat"][(2, 1)])):
        acc = round(rng.uniform(0.05, 0.6), 4)
        truth.setdefault(("probe", group), []).append(acc)
        new_run(runs, dict(task="id_probe", dataset="bp4d", fold=0, seed=0, lambda_id=0.0, model="vit_tiny",
                           recipe="id_probe", init=f"/x/{source}/checkpoints/best.pt", source_run=source),
                summary={"best": {"epoch": 1, "accuracy": acc, "chance": 0.1}, "last": {"epoch": 1, "accuracy": acc}})
    new_run(runs, dict(task="pretrain", dataset="faces", fold=0, seed=0, lambda_id=0.0, model="vit_tiny",
                       recipe="pretrain"), summary={"best": None, "last": {"loss": 0.3}})
    new_run(runs, {**au_config(1, 0), "eval_checkpoint": "/x/best.pt", "source_run": ids["fmae"][(1, 0)]},
            summary={"best": au_record(1, *(rand_values(rng, BP4D) for _ in range(3)))})
    return runs, truth, ids


def row_of(results, label: str):
    for report in results.reports:
        for row in report.rows:
            if row.label == label:
                return report, row
    raise AssertionError(f"no row {label!r}")


def assert_row(row, mean, std, n):
    assert row.n == n
    for c in mean:
        assert row.mean[c] == pytest.approx(mean[c], rel=1e-12, abs=1e-12), c
        if std[c] is None:
            assert row.std[c] is None
        else:
            assert row.std[c] == pytest.approx(std[c], rel=1e-12, abs=1e-12), c


# --- aggregation --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,epoch", [("f1", "best"), ("f1_best", "best"), ("auc", "best"), ("f1", "last")])
def test_au_rows_average_folds_within_a_seed_then_seeds(study, metric, epoch):
    runs, truth, ids = study
    results = build(runs, scoring=Scoring(metric, epoch))
    for group, label in (("fmae", "vit_tiny fmae λ=0"), ("iat", "vit_tiny fmae_iat λ=2")):
        mean, std, n = expected_au(truth[(group, metric, epoch)], BP4D)
        report, row = row_of(results, label)
        assert_row(row, mean, std, n)
    _, row = row_of(results, "vit_tiny fmae λ=0")
    assert row.n == 3 and not row.partial  # seed 3 lacks folds 2 and 3: not in the complete row
    assert row.superseded == [ids["dup"]]  # the older run of (fold 1, seed 0) gave way to the newer
    assert [s.seed for s in row.samples] == [0, 1, 2] and all(s.folds == [1, 2, 3] for s in row.samples)
    assert report.value_label == {"f1": "F1@0.5 (%)", "f1_best": "F1 best-threshold (tuned on test) (%)",
                                  "auc": "ROC AUC (%)"}[metric]
    assert report.epoch_label.startswith(f"epoch: {epoch}")


def test_an_incomplete_seed_is_its_own_partial_row_and_complete_only_leaves_it_out(study):
    runs, truth, _ = study
    results = build(runs, Selection(datasets=("bp4d",)))
    report = results.reports[0]
    labels = [r.label for r in report.rows if r.group == "vit_tiny fmae λ=0"]
    assert labels == ["vit_tiny fmae λ=0", "vit_tiny fmae λ=0 · fold 1 of 3, seed 3"]  # complete first
    _, complete = row_of(results, "vit_tiny fmae λ=0")
    mean, std, _ = expected_au(truth[("fmae", "f1", "best")], BP4D)
    assert_row(complete, mean, std, 3)  # the partial seed is never averaged into the complete row
    _, row = row_of(results, "vit_tiny fmae λ=0 · fold 1 of 3, seed 3")
    mean, std, _ = expected_au({3: {1: truth["fmae seed3 fold1"]["f1_05"]}}, BP4D)
    assert_row(row, mean, std, 1)
    assert row.partial and row.coverage == (1,) and row.samples[0].folds == [1] and row.group_key == complete.group_key
    assert any(n.startswith("vit_tiny fmae λ=0 · fold 1 of 3, seed 3: averaged over 1 of 3 folds: not comparable")
               for n in report.notes())

    only = build(runs, Selection(datasets=("bp4d",)), complete_only=True)
    assert not any(r.partial for r in only.reports[0].rows)
    _, row = row_of(only, "vit_tiny fmae λ=0")
    assert row.n == 3 and row.incomplete == {3: [2, 3]}
    assert "vit_tiny fmae λ=0: seed 3 lacks folds 2, 3: left out (complete-only)" in only.reports[0].notes()


def test_partial_rows_group_seeds_by_the_folds_they_hold(tmp_path):
    """folds 1,2 × seeds 0,1 is one row "folds 1–2 of 3, seeds 0–1"; a seed with other folds is another."""
    runs = tmp_path / "runs"
    rng = random.Random(11)
    per_seed: dict = {}
    for fold, seed in ((1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (3, 2)):
        rec = au_record(1, *(rand_values(rng, DISFA) for _ in range(3)))
        new_run(runs, au_config(fold, seed, dataset="disfa"), "done", {"best": rec, "last": rec})
        per_seed.setdefault(seed, {})[fold] = rec["f1_05"]
    rows = build(runs).reports[0].rows
    assert [r.label for r in rows] == ["vit_tiny fmae λ=0 · folds 1–2 of 3, seeds 0–1",
                                       "vit_tiny fmae λ=0 · folds 1,3 of 3, seed 2"]
    mean, std, _ = expected_au({s: per_seed[s] for s in (0, 1)}, DISFA)
    assert_row(rows[0], mean, std, 2)
    # nothing complete: complete-only shows the group with no numbers, and says why
    only = build(runs, complete_only=True).reports[0]
    assert [(r.label, r.n, r.mean["avg"]) for r in only.rows] == [("vit_tiny fmae λ=0", 0, None)]
    assert "vit_tiny fmae λ=0: no seed has every fold yet: no complete numbers" in only.notes()


def test_degenerate_runs_mark_their_row(tmp_path):
    """A best threshold at the grid's edge (every AU predicted) marks the run's row, from summary.json's own
    flag when it has one, else from the threshold."""
    runs = tmp_path / "runs"
    rng = random.Random(5)
    made = []
    for fold, threshold, flag in ((1, 0.01, None), (2, 0.4, None), (3, 0.4, True)):
        rec = {**au_record(1, *(rand_values(rng, DISFA) for _ in range(3))), "best_threshold": threshold}
        if flag is not None:
            rec["degenerate"] = flag
        made.append(new_run(runs, au_config(fold, 0, dataset="disfa"), "done", {"best": rec, "last": rec}).id)
    report = build(runs).reports[0]
    assert report.rows[0].degenerate == [made[0], made[2]]
    assert "vit_tiny fmae λ=0: 2 of 3 runs degenerate (best threshold no better than every AU present, or none predicted)" in report.notes()


def test_fer_and_identity_probe_rows(study):
    runs, truth, _ = study
    results = build(runs)
    report, row = row_of(results, "vit_tiny fmae")
    assert (report.dataset, report.task, report.columns, report.value_label) == \
        ("rafdb", "fer", ["top1"], "top-1 accuracy (%)")
    accs = [a * 100 for a in truth["rafdb"]]
    assert row.n == 3 and row.mean["top1"] == pytest.approx(statistics.mean(accs), rel=1e-12)
    assert row.std["top1"] == pytest.approx(statistics.stdev(accs), rel=1e-12)
    assert row.delta_vs == "FMAE" and row.delta["top1"] == pytest.approx(row.mean["top1"] - 93.09, abs=1e-12)
    assert [p.method for p in report.paper] == ["FMAE", "LA-Net"]
    for group, label in (("fmae", "vit_tiny probing bp4d fmae λ=0"), ("iat", "vit_tiny probing bp4d fmae_iat λ=2")):
        report, row = row_of(results, label)
        accs = [a * 100 for a in truth[("probe", group)]]
        assert report.task == "id_probe" and report.paper == [] and row.delta_vs is None
        assert row.n == 2 and row.mean["top1"] == pytest.approx(statistics.mean(accs), rel=1e-12)
    assert results.left_out == {"pretrain runs": 1, "evaluation runs (fmae eval)": 1}


def test_paper_rows_and_differences(study):
    runs, _, _ = study
    results = build(runs, Selection(datasets=("bp4d",)), Scoring("f1_best"))
    report, fmae = row_of(results, "vit_tiny fmae λ=0")
    _, iat = row_of(results, "vit_tiny fmae_iat λ=2")
    published = {p.method: p for p in paper_rows("bp4d")}
    assert [p.method for p in report.paper] == ["FMAE", "FMAE-IAT", "MDHR", "MCM", "CLEF"]
    assert published["FMAE"].values["AU1"] == 59.2 and published["FMAE-IAT"].values["avg"] == 67.1
    for row, method in ((fmae, "FMAE"), (iat, "FMAE-IAT")):  # auto: λ > 0 is compared with FMAE-IAT
        assert row.delta_vs == method
        for c in report.columns:
            assert row.delta[c] == pytest.approx(row.mean[c] - published[method].values[c], abs=1e-12)
    assert report.paper_note is None  # f1_best is what the paper reports
    mdhr = build(runs, Selection(datasets=("bp4d",)), Scoring("f1_best"), versus="mdhr")
    _, row = row_of(mdhr, "vit_tiny fmae λ=0")
    assert row.delta_vs == "MDHR" and row.delta["AU1"] is None
    assert row.delta["avg"] == pytest.approx(row.mean["avg"] - 66.6, abs=1e-12)
    assert row_of(build(runs, versus="none"), "vit_tiny fmae λ=0")[1].delta_vs is None
    f1 = build(runs, Selection(datasets=("bp4d",)))
    assert "not like for like" in f1.reports[0].paper_note
    assert all(row.delta_vs is None for row in f1.reports[0].rows)  # no F1@0.5 − tuned-F1 differences
    auc = build(runs, Selection(datasets=("bp4d",)), Scoring("auc"))
    assert auc.reports[0].paper == [] and "no AUC" in auc.reports[0].paper_note


def test_filters_by_state_tag_dataset_and_config_key(tmp_path):
    runs = tmp_path / "runs"
    for fold in (1, 2, 3):
        rec = au_record(1, *({a: 0.5 for a in DISFA} for _ in range(3)))
        new_run(runs, au_config(fold, 0, dataset="disfa", epochs=5), "done", {"best": rec, "last": rec}, tags=["a"])
        rec = au_record(1, *({a: 0.7 for a in DISFA} for _ in range(3)))
        new_run(runs, au_config(fold, 0, dataset="disfa", epochs=9), "running" if fold == 3 else "done",
                {"best": rec, "last": rec})
    plain = build(runs)
    # one group of runs that differ in epochs: each cell's newest done run counts, and the report says so
    assert [(r.label, r.n, round(r.mean["avg"], 9)) for r in plain.reports[0].rows] == \
        [("vit_tiny fmae λ=0", 1, round((70 + 70 + 50) / 3, 9))]
    assert plain.reports[0].grids[0].mixed == ["epochs"]
    assert any("differ in epochs" in note and "--by epochs" in note for note in plain.reports[0].notes())
    by = build(runs, Selection(by=("epochs",), states=("done", "running")))
    assert [(r.label, round(r.mean["avg"], 9)) for r in by.reports[0].rows] == \
        [("vit_tiny fmae λ=0 epochs=5", 50.0), ("vit_tiny fmae λ=0 epochs=9", 70.0)]
    tagged = build(runs, Selection(by=("epochs",), tags=("a",)))
    assert [r.label for r in tagged.reports[0].rows] == ["vit_tiny fmae λ=0 epochs=5"]
    assert build(runs, Selection(datasets=("bp4d",))).reports == []


# --- re-scoring saved predictions ---------------------------------------------------------------------------

def f1_table(probs: np.ndarray, labels: np.ndarray, thresholds) -> np.ndarray:
    """Plain F1 = 2TP / (2TP + FP + FN) per threshold and AU, 0 when undefined (sklearn's zero_division)."""
    out = np.zeros((len(thresholds), probs.shape[1]))
    for i, t in enumerate(thresholds):
        pred = probs >= t
        tp = (pred & labels).sum(0)
        denom = pred.sum(0) + labels.sum(0)
        out[i] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return out


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """DISFA, one seed, 3 folds, each with saved predictions (fold 2's columns stored in another AU order)."""
    runs = tmp_path_factory.mktemp("pred") / "runs"
    rng = np.random.default_rng(3)
    data = {}
    for fold in (1, 2, 3):
        labels = rng.random((240, len(DISFA))) < rng.uniform(0.1, 0.5, len(DISFA))
        probs = np.clip(0.35 * labels + rng.random(labels.shape) * 0.7, 0, 1).astype(np.float32)
        data[fold] = (probs.astype(np.float64), labels)
        codes = np.array(get_dataset("disfa").au_codes)
        order = np.arange(len(DISFA))[::-1] if fold == 2 else np.arange(len(DISFA))
        rec = {"epoch": 4, **au_scores(probs, labels).to_dict(codes)}
        run = new_run(runs, au_config(fold, 0, dataset="disfa"), "done", {"best": rec, "last": rec})
        run.predictions.mkdir()
        np.savez(run.predictions / "best.npz", probs=probs[:, order], labels=labels[:, order].astype(np.uint8),
                 au_codes=codes[order], epoch=np.array(4))
    return runs, data


def test_rescoring_policies_match_an_independent_computation(predicted):
    runs, data = predicted
    thresholds = np.arange(1, 100) / 100
    # the test's F1 agrees with sklearn's f1_score where we look
    probs, labels = data[1]
    for t in (0.3, 0.71):
        for k in (0, 5):
            assert f1_table(probs, labels, [t])[0, k] == pytest.approx(f1_score(labels[:, k], probs[:, k] >= t))
    expected = {"0.3": {}, "test-tuned": {}, "per-au": {}}
    for fold, (probs, labels) in data.items():
        table = f1_table(probs, labels, thresholds)
        expected["0.3"][fold] = dict(zip(DISFA, f1_table(probs, labels, [0.3])[0]))
        best = int(np.argmax(table.mean(1)))
        expected["test-tuned"][fold] = dict(zip(DISFA, table[best]))
        expected["per-au"][fold] = dict(zip(DISFA, table.max(0)))
    for policy, want in expected.items():
        results = build(runs, scoring=Scoring("f1", "best", policy))
        mean, _, _ = expected_au({0: want}, DISFA)
        report, row = row_of(results, "vit_tiny fmae λ=0")
        assert row.n == 1 and all(row.std[c] is None for c in row.columns)
        for c in row.columns:
            assert row.mean[c] == pytest.approx(mean[c], rel=1e-12), (policy, c)
        assert "re-scored from saved predictions" in report.value_label
    assert row_of(build(runs, scoring=Scoring("f1", "best", "0.3")), "vit_tiny fmae λ=0")[0].value_label == \
        "F1@0.3 (%), re-scored from saved predictions"
    # re-scoring at 0.5 / test-tuned gives what the trainer recorded in summary.json
    for summary_metric, policy in (("f1", "0.5"), ("f1_best", "test-tuned")):
        a = row_of(build(runs, scoring=Scoring(summary_metric)), "vit_tiny fmae λ=0")[1]
        b = row_of(build(runs, scoring=Scoring("f1", "best", policy)), "vit_tiny fmae λ=0")[1]
        assert a.mean == pytest.approx(b.mean, rel=1e-12)


# --- the completeness grid and its queue command -------------------------------------------------------------

def test_grid_states_and_the_queue_command_adds_exactly_the_missing_cells(tmp_path):
    from fmae.config import default_config_text, load_project
    from fmae.run_config import create_run, resolve_run_config

    cfg = tmp_path / "fmae.toml"
    cfg.write_text(default_config_text())  # defaults.seeds = [0, 1, 2]
    project = load_project(cfg)
    cli = {"model": "vit_tiny", "epochs": 1, "input_size": 32, "blr": 0.003, "lambda_id": 0.5}
    states = {(1, 0): "done", (2, 0): "done", (3, 0): "running", (1, 1): "failed", (2, 1): "queued"}
    made = {}
    for (fold, seed), state in states.items():
        resolved = resolve_run_config(project, "disfa", recipe="fmae_iat", fold=fold, seed=seed, cli=cli, generate=False)
        run = create_run(project.runs_dir, resolved)
        if state != "queued":
            run.update_status(state=state)
        if state == "done":
            rec = au_record(1, *({a: 0.5 for a in DISFA} for _ in range(3)))
            run.write_summary({"best": rec, "last": rec})
        made[(fold, seed)] = run.id
    # The grid's seeds are those the group's runs used (0, 1), not fmae.toml's defaults.seeds (0, 1, 2) ...
    plain = run_fmae("report", "--config", cfg, "--format", "json", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["reports"][0]["grids"][0]["seeds"] == [0, 1]
    # ... unless the user widens them.
    result = run_fmae("report", "--config", cfg, "--format", "json", "--seeds", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["reports"][0]
    grid = report["grids"][0]
    assert grid["group"] == "vit_tiny fmae_iat λ=0.5" and grid["seeds"] == [0, 1, 2] and grid["folds"] == [1, 2, 3]
    cells = {(c["fold"], c["seed"]): c["state"] for c in grid["cells"]}
    assert cells == {**{(f, s): "missing" for f in (1, 2, 3) for s in (0, 1, 2)}, **states}
    assert grid["counts"] == {"done": 2, "running": 1, "queued": 1, "failed": 1, "cancelled": 0, "missing": 4}
    assert grid["retry"] == [made[(1, 1)]] and grid["exact"] is True
    commands = grid["queue_commands"]
    assert commands == [
        f"fmae queue add disfa --folds 3 --seeds 1 --lambdas 0.5 --model vit_tiny --recipe fmae_iat --epochs 1 "
        f"--set blr=0.003 --set input_size=32 --config {cfg}",
        f"fmae queue add disfa --folds 1,2,3 --seeds 2 --lambdas 0.5 --model vit_tiny --recipe fmae_iat --epochs 1 "
        f"--set blr=0.003 --set input_size=32 --config {cfg}"]
    added = set()
    for command in commands:  # the queue itself says which cells each command would add
        dry = run_fmae(*shlex.split(command)[1:], "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert re.search(r"\b0 skipped\b", dry.stdout), dry.stdout
        added |= {(int(f), int(s)) for f, s in re.findall(r"would add fold (\d+) seed (\d+)", dry.stdout)}
    assert added == {cell for cell, state in cells.items() if state == "missing"}
    # runs not evaluated yet (running, queued, failed before an evaluation) are in the grid, not warnings
    assert build(project.runs_dir, Selection(states=("all",))).skipped == []


def test_report_modules_do_not_import_torch():
    code = ("import sys, fmae.report, fmae.report.export, fmae.report.paper; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- a real tiny run ----------------------------------------------------------------------------------------

def test_a_real_tiny_run_reads_and_rescores_consistently(make_synth, tmp_path):
    """The trainer's own summary.json and predictions/best.npz: re-scoring at 0.5 and at the test-tuned
    threshold gives exactly what the trainer recorded; the grid asks for the other folds and seeds."""
    root = make_synth("bp4d")
    runs = tmp_path / "runs"
    result = run_fmae("train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl",
                      "--model", "vit_tiny", "--batch-size", "8", "--epochs", "1", "--set", "input_size=32",
                      "--set", "num_workers=0", "--set", "warmup_epochs=1", "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for summary_metric, policy in (("f1", "0.5"), ("f1_best", "test-tuned")):
        a = build(runs, scoring=Scoring(summary_metric))
        b = build(runs, scoring=Scoring("f1", "best", policy))
        ra, rb = a.reports[0].rows[0], b.reports[0].rows[0]
        assert ra.n == rb.n == 1 and ra.mean == pytest.approx(rb.mean, rel=1e-12, abs=1e-12)
        assert all(0 <= v <= 100 for v in ra.mean.values() if v is not None)
    grid = build(runs, seeds=[0, 1]).reports[0].grids[0]
    assert grid.counts()["done"] == 1 and len(grid.missing()) == 5
    assert [(m.folds, m.seeds) for m in grid.to_add] == [([2, 3], [0]), ([1, 2, 3], [1])]
    assert not math.isnan(grid.to_add[0].lambda_id)


def test_the_published_numbers_are_the_reference_transcription():
    from conftest import SHARED_REFERENCE

    from fmae.report.paper import all_paper_rows, parse_paper_csv

    for row in all_paper_rows():  # each of the paper's own AU rows: Avg. is the mean of its AUs (±0.05 rounding)
        aus = [v for k, v in row.values.items() if k.startswith("AU")]
        if row.venue == "ours" and aus:
            assert len(aus) == len(get_dataset(row.dataset).au_codes)
            assert abs(sum(aus) / len(aus) - row.values["avg"]) <= 0.05 + 1e-9, row.method
    reference = SHARED_REFERENCE / "paper_results.csv"
    if not reference.is_file():
        pytest.skip("the shared reference is not next to this checkout")
    assert parse_paper_csv(reference.read_text()) == list(all_paper_rows())
