"""`fmae compare` and fmae.report.compare on constructed predictions with a known difference: a clear one
is "better" (and the reverse "worse"), none is "within noise"; the per-cell numbers equal fmae.metrics and
the report's rows; the bootstrap resamples subjects; too few cells can never be significant."""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_fmae
from fmae.errors import FmaeError
from fmae.metrics import au_scores
from fmae.registry import get_dataset
from fmae.report import Scoring, build
from fmae.report.compare import CellPair, compare_cells, compare_groups, compare_rows
from fmae.runs import RunDir, make_run_id

SPEC = get_dataset("bp4d")
CODES = np.array(SPEC.au_codes)
_CLOCK = itertools.count()
FRAMES_PER_SUBJECT = 24


def cell_frames(fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fold's test frames (every group and seed sees the same ones): subjects, paths, labels."""
    rng = np.random.default_rng(100 + fold)
    people = sorted(SPEC.test_subjects(fold))
    subjects = np.repeat(people, FRAMES_PER_SUBJECT)
    paths = np.array([f"{s}_T1/frame_{i:03d}.jpg" for i, s in enumerate(subjects)])
    # each subject its own base rates: frames of a subject are correlated, as in BP4D
    rates = rng.uniform(0.1, 0.6, (len(people), len(CODES))).repeat(FRAMES_PER_SUBJECT, axis=0)
    return subjects, paths, (rng.random(rates.shape) < rates).astype(np.uint8)


def new_run(runs: Path, fold: int, seed: int, lam: float, recipe: str, edge: float, noise_seed: int,
            subjects_saved: bool = True) -> RunDir:
    when = datetime(2026, 1, 1) + timedelta(seconds=next(_CLOCK))
    cfg = dict(task="au", dataset="bp4d", fold=fold, seed=seed, lambda_id=lam, model="vit_tiny", recipe=recipe, epochs=2)
    run = RunDir.create(runs, make_run_id("bp4d", "vit_tiny", seed, fold=fold, lambda_id=lam, now=when), cfg,
                        {"command": ["test"]})
    subjects, paths, labels = cell_frames(fold)
    rng = np.random.default_rng(noise_seed)
    logits = rng.normal(0, 1, labels.shape) + edge * (2.0 * labels - 1)
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    rec = {"epoch": 2, **au_scores(probs, labels).to_dict(CODES)}
    run.write_summary({"run_id": run.id, "best": rec, "last": rec, "best_epoch": 2})
    run.predictions.mkdir()
    saved = dict(probs=probs, labels=labels, paths=paths, au_codes=CODES, epoch=np.array(2))
    if subjects_saved:
        saved["subjects"] = subjects
    np.savez(run.predictions / "best.npz", **saved)
    run.update_status(state="done")
    return run


IAT, BASE, TWIN = "vit_tiny fmae_iat λ=2", "vit_tiny fmae λ=0", "vit_tiny fmae λ=0.5"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """3 folds × 2 seeds of three groups: IAT clearly better than BASE; TWIN as good as BASE (other noise).
    BASE's fold-3 runs predate saved subject ids (read from the paths)."""
    runs = tmp_path_factory.mktemp("cmp") / "runs"
    for fold, seed in itertools.product((1, 2, 3), (0, 1)):
        cell = fold * 10 + seed
        new_run(runs, fold, seed, 2.0, "fmae_iat", 1.4, cell)
        new_run(runs, fold, seed, 0.0, "fmae", 0.9, 1000 + cell, subjects_saved=fold != 3)
        new_run(runs, fold, seed, 0.5, "fmae", 0.9, 2000 + cell)
    return runs


def test_a_clear_difference_is_better_and_its_reverse_worse(study):
    result = compare_groups(study, IAT, BASE, draws=500)
    assert len(result.cells) == 6 and result.subjects == 41 and result.exact and result.permutations == 64
    for m in result.metrics:
        assert m.verdict["avg"] == "better", (m.metric, m.delta, m.low, m.p)
        assert sum(v == "better" for v in m.verdict.values()) >= 11
        assert m.low["avg"] < m.delta["avg"] < m.high["avg"] and m.low["avg"] > 0
        assert m.p["avg"] == pytest.approx(2 / 64)  # every cell favours IAT: only the two all-same patterns
    assert [m.label for m in result.metrics] == ["F1@0.5", "F1 best-threshold (tuned on test)", "ROC AUC"]
    reverse = compare_groups(study, BASE, IAT, draws=500, metrics=["f1"])
    assert reverse.metrics[0].verdict["avg"] == "worse"
    assert reverse.metrics[0].delta["avg"] == pytest.approx(-result.metrics[0].delta["avg"])


def test_no_difference_is_within_noise(study):
    result = compare_groups(study, TWIN, BASE, draws=500)
    for m in result.metrics:
        assert m.verdict["avg"] == "within noise", (m.metric, m.delta, m.low, m.high, m.p)
        assert m.low["avg"] < 0 < m.high["avg"]
        assert sum(v == "within noise" for v in m.verdict.values()) >= 12


def test_means_are_the_reports_rows_and_the_metrics_of_each_cell(study):
    result = compare_groups(study, IAT, BASE, draws=200)
    for metric in result.metrics:
        results = build(study, scoring=Scoring(metric.metric))
        rows = {r.label: r for r in results.reports[0].rows}
        for col in metric.columns:
            assert metric.a[col] == pytest.approx(rows[IAT].mean[col], abs=1e-9)
            assert metric.b[col] == pytest.approx(rows[BASE].mean[col], abs=1e-9)
            assert metric.delta[col] == pytest.approx(rows[IAT].mean[col] - rows[BASE].mean[col], abs=1e-9)
    # the Results screen's pinned-baseline Δ: the same comparison from two report rows
    results = build(study, scoring=Scoring("f1"))
    rows = {r.label: r for r in results.reports[0].rows}
    pinned = compare_rows(study, rows[IAT], rows[BASE], metric="f1", draws=500)
    assert pinned.delta == result.metrics[0].delta and pinned.verdict["avg"] == "better"


def test_the_bootstrap_resamples_subjects_not_frames(tmp_path):
    """A is better on half the subjects and worse on the rest: resampling subjects must give a wide
    interval; the same predictions with one "subject" per frame (a frame bootstrap) a narrow one."""
    rng = np.random.default_rng(7)
    subjects, paths, labels = cell_frames(1)
    favoured = np.isin(subjects, sorted(set(subjects))[::2])[:, None]
    noise = rng.normal(0, 1, labels.shape)
    edge_a = np.where(favoured, 2.0, 0.4)
    pairs = {}
    for name, ids in (("subjects", subjects), ("frames", paths)):
        runs = []
        for arm, edge in (("a", edge_a), ("b", 1.2)):
            run = tmp_path / name / arm
            (run / "predictions").mkdir(parents=True)
            probs = (1 / (1 + np.exp(-(noise + edge * (2.0 * labels - 1))))).astype(np.float32)
            np.savez(run / "predictions" / "best.npz", probs=probs, labels=labels, paths=paths, subjects=ids,
                     au_codes=CODES)
            runs.append(run)
        pairs[name] = compare_cells([CellPair(1, 0, *runs)], "bp4d", draws=500, metrics=["auc"]).metrics[0]
    by_subject, by_frame = pairs["subjects"], pairs["frames"]
    assert by_subject.delta["avg"] == pytest.approx(by_frame.delta["avg"])
    width = {k: m.high["avg"] - m.low["avg"] for k, m in pairs.items()}
    assert width["subjects"] > 3 * width["frames"], width


def test_too_few_cells_are_never_significant(study):
    iat = sorted(p for p in study.iterdir() if "-l2-" in p.name)[:3]
    base = sorted(p for p in study.iterdir() if "-l0-" in p.name)[:3]
    pairs = [CellPair(f, 0, a, b) for f, a, b in zip((1, 2, 3), iat, base)]
    result = compare_cells(pairs, "bp4d", draws=300, metrics=["f1"])
    assert result.metrics[0].verdict["avg"] == "within noise" and result.metrics[0].low["avg"] > 0
    assert any("cannot reach p < 0.05" in n for n in result.notes)


def test_cli_prints_labelled_tables_and_json(study, tmp_path):
    result = run_fmae("compare", "--runs-dir", study, "vit_tiny fmae_iat lambda=2", "bp4d vit_tiny fmae λ=0",
                      "--draws", "300", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for needle in ("A = bp4d vit_tiny fmae_iat λ=2", "6 paired cells", "41 test subjects",
                   "F1 best-threshold (tuned on test) (%)", "ROC AUC (%)", "better", "all 64 sign patterns",
                   "note: the bootstrap resamples test subjects only"):
        assert needle in result.stdout, needle
    import json

    data = json.loads(json.dumps(compare_groups(study, IAT, BASE, metrics=["auc"], draws=200).to_dict()))
    assert data["metrics"][0]["metric"] == "auc" and len(data["cells"]) == 6
    assert data["metrics"][0]["verdict"]["avg"] == "better"


@pytest.mark.parametrize("a,b,options,needle", [
    ("nobody λ=1", BASE, {}, "'nobody λ=1'"),
    (BASE, BASE, {}, "same group"),
    (IAT, BASE, {"metrics": ["f2"]}, "--metric f2"),
    (IAT, BASE, {"draws": 10}, "--draws 10"),
])
def test_bad_input_is_named(study, a, b, options, needle):
    with pytest.raises(FmaeError) as e:
        compare_groups(study, a, b, **options)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_group_is_one_line(study, tmp_path):
    line = assert_one_line_error(run_fmae("compare", "--runs-dir", study, "nobody", BASE, cwd=tmp_path), "'nobody'")
    assert "groups: bp4d vit_tiny fmae λ=0" in line


def test_the_identity_heads_depth_is_part_of_the_experiment_and_of_the_row(tmp_path):
    """id_head_depth: 1 (linear, what every older run had) keys as a run without the key; 2 and 3 are other
    experiments, and the report names them as their own rows."""
    from fmae.experiments import config_key
    from fmae.recipes import finetune_recipe
    from fmae.report.scoring import group_fields, group_label

    assert finetune_recipe("bp4d", "fmae_iat")["id_head_depth"] == 1
    old = dict(task="au", dataset="bp4d", fold=1, seed=0, lambda_id=2.0, model="vit_tiny", recipe="fmae_iat")
    assert config_key({**old, "id_head_depth": 1}) == config_key(old) != config_key({**old, "id_head_depth": 3})
    assert group_label(group_fields({**old, "id_head_depth": 3}, ())) == "vit_tiny fmae_iat λ=2 id_head_depth=3"
    assert group_fields({**old, "id_head_depth": 1}, ()) == group_fields(old, ())


async def test_launch_plans_the_ablations_identity_head(tmp_path):
    """Launch's ID head: the 3-layer MLP puts id_head_depth = 3 into every planned run (a new experiment
    beside the linear head's)."""
    from textual.widgets import Select

    from fmae_tui.app import create_app
    from tui_support import open_launch, tiny_project, wait_until

    app = create_app(tiny_project(tmp_path), tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        launch = await open_launch(pilot)
        head = launch.query_one("#id_head", Select)
        assert head.value == "1" and not head.disabled
        assert all(p.values["id_head_depth"] == 1 for p in launch.plan.to_add)
        previews = launch.previews
        head.value = "3"
        await wait_until(pilot, lambda: launch.previews > previews and launch.plan is not None, what="MLP plan")
        assert {p.values["id_head_depth"] for p in launch.plan.to_add} == {3}
        assert launch.matrix()["cli"]["id_head_depth"] == 3
        assert "ID head 3-layer MLP" in str(launch.query_one("#launch-preview").render())  # the plan's "each:" line


def test_counts_are_kept_while_the_predictions_file_is_unchanged(study, monkeypatch):
    """The app compares every row with one pinned baseline every few seconds: a run's counts are made
    once, and made again only when its predictions file changes."""
    import fmae.report.compare as compare

    made = []
    real = compare.subject_counts
    monkeypatch.setattr(compare, "subject_counts", lambda *a: made.append(1) or real(*a))
    compare.clear_cache()
    first = compare_groups(study, IAT, BASE, draws=200, metrics=["f1"])
    assert len(made) == 12  # 6 cells × 2 groups
    again = compare_groups(study, IAT, BASE, draws=200, metrics=["f1"])
    assert len(made) == 12 and again.metrics[0].delta == first.metrics[0].delta
    twin = compare_groups(study, TWIN, BASE, draws=200, metrics=["f1"])  # the baseline's counts are reused
    assert len(made) == 18 and twin.metrics[0].verdict["avg"] == "within noise"
    touched = sorted(study.glob("*-l0-*/predictions/best.npz"))[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    compare_groups(study, TWIN, BASE, draws=200, metrics=["f1"])
    assert len(made) == 19  # only the rewritten file's counts are made again


def test_unreadable_or_foreign_predictions_are_named(tmp_path):
    runs = []
    for arm in ("a", "b"):
        run = tmp_path / arm
        (run / "predictions").mkdir(parents=True)
        runs.append(run)
    subjects, paths, labels = cell_frames(1)
    probs = np.full(labels.shape, 0.5, dtype=np.float32)
    np.savez(runs[0] / "predictions" / "best.npz", probs=probs, labels=labels, paths=paths, subjects=subjects,
             au_codes=CODES)
    probs[0, 0] = np.nan
    np.savez(runs[1] / "predictions" / "best.npz", probs=probs, labels=labels, paths=paths, subjects=subjects,
             au_codes=CODES)
    with pytest.raises(FmaeError, match=r"b/predictions/best.npz: probabilities outside \[0, 1\] or not finite"):
        compare_cells([CellPair(1, 0, *runs)], "bp4d", draws=100)
    probs[0, 0] = 0.5
    np.savez(runs[1] / "predictions" / "best.npz", probs=probs[:10], labels=labels[:10], paths=paths[:10],
             subjects=subjects[:10], au_codes=CODES)
    with pytest.raises(FmaeError, match="tested on different frames"):
        compare_cells([CellPair(1, 0, *runs)], "bp4d", draws=100)
