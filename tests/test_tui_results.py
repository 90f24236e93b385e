"""The Results screen over run folders with known numbers: the same tables as `fmae report` (checked
against an independent computation), metric and epoch switches, the paper's rows, a pinned baseline,
the completeness grid and queueing its missing cell through the real queue, and export."""

from __future__ import annotations

import random
import shutil
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import read_csv, run_fmae
from tui_support import screen_text, wait_until
from fmae.config import default_config_text, update_config
from fmae.report.paper import paper_rows
from fmae.registry import get_dataset
from fmae.runs import load_run
from fmae.scheduler import stop
from fmae_tui.app import create_app
from fmae_tui.screens.confirm import ConfirmScreen
from fmae_tui.screens.results import ResultsScreen
from test_report import au_config, au_record, expected_au, new_run, rand_values

BP4D = get_dataset("bp4d").au_names()
TINY = "synthetic = { subjects = 5, frames = 24, size = 48, seed = 0 }"


@pytest.fixture
def study(tmp_path: Path):
    """bp4d vit_tiny: FMAE (λ 0) seeds 0 and 1 on every fold; FMAE-IAT (λ 2) seed 0 on folds 1 and 2 (fold 3
    missing). fmae.toml expects seeds 0 and 1. `truth[(group, metric)][seed][fold]` = the per-AU values."""
    config = tmp_path / "fmae.toml"
    config.write_text(re.sub(r"synthetic = \{[^}]*\}", TINY, default_config_text()), encoding="utf-8")
    update_config(config, {"defaults.seeds": [0, 1]})
    runs = tmp_path / "runs"
    rng = random.Random(3)
    truth: dict = {}
    for group, lam, recipe, cells in (("fmae", 0.0, "fmae", [(f, s) for s in (0, 1) for f in (1, 2, 3)]),
                                      ("iat", 2.0, "fmae_iat", [(1, 0), (2, 0)])):
        for fold, seed in cells:
            best = {m: rand_values(rng, BP4D) for m in ("f1", "f1_best", "auc")}
            last = {m: rand_values(rng, BP4D) for m in ("f1", "f1_best", "auc")}
            summary = {"task": "au", "best_epoch": 2, "best": au_record(2, best["f1"], best["f1_best"], best["auc"]),
                       "last": au_record(3, last["f1"], last["f1_best"], last["auc"])}
            new_run(runs, au_config(fold, seed, lam, recipe), "done", summary)
            for m in best:
                truth.setdefault((group, m, "best"), {}).setdefault(seed, {})[fold] = best[m]
                truth.setdefault((group, m, "last"), {}).setdefault(seed, {})[fold] = last[m]
    yield config, runs, truth
    run_fmae("queue", "cancel", "--all", "--config", config, cwd=tmp_path)
    stop(runs, wait=30)


def cell(screen: ResultsScreen, row_key: str, column: str) -> str:
    return str(screen.table.get_cell(row_key, column))


async def rebuilt(pilot, screen: ResultsScreen, before: int) -> None:
    await wait_until(pilot, lambda: screen.builds > before and not screen._building, what="rebuild")
    await pilot.pause()


async def test_results_tables_switches_baseline_grid_queue_and_export(study, tmp_path: Path) -> None:
    config, runs, truth = study
    app = create_app(config, runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen.builds > 0, what="results")
        screen: ResultsScreen = app.screen
        await pilot.pause()
        text = screen_text(app)
        # The default is the number the paper's rows are: F1 at the best threshold, labelled as tuned on test.
        assert "BP4D — AU detection" in text and "F1 best-threshold (tuned on test) (%)" in text
        assert "not like for like" not in text

        # Rows as `fmae report` makes them, to the digit: folds averaged within a seed, mean ± std over seeds.
        rows = {screen._rows[k].label: k for k in screen._rows if k.startswith("row")}
        iat_label = "vit_tiny fmae_iat λ=2 · folds 1–2 of 3, seed 0"
        assert set(rows) == {"vit_tiny fmae λ=0", iat_label}
        fmae_key, iat_key = rows["vit_tiny fmae λ=0"], rows[iat_label]
        fmae_paper = next(p for p in paper_rows("bp4d") if p.method == "FMAE")
        iat_paper = next(p for p in paper_rows("bp4d") if p.method == "FMAE-IAT")
        mean_b, std_b, _ = expected_au(truth[("fmae", "f1_best", "best")], BP4D)
        assert cell(screen, fmae_key, "n") == "2"
        for column in ("avg", "AU1", "AU24"):
            shown = cell(screen, fmae_key, column).splitlines()[0]
            assert shown == f"{mean_b[column]:.1f}±{std_b[column]:.1f}", (column, shown)
        # Δ against the paper's FMAE row, on the cell's last line; the group cell names that row.
        assert cell(screen, fmae_key, "avg").splitlines()[-1] == f"{mean_b['avg'] - fmae_paper.values['avg']:+.1f}"
        assert cell(screen, fmae_key, "group").splitlines()[-1] == "Δ vs paper: FMAE"
        # The IAT group has only folds 1 and 2 of seed 0: a partial row, labelled with what it holds, with
        # its own numbers (never averaged with complete rows), compared with the FMAE-IAT row.
        partial = expected_au(truth[("iat", "f1_best", "best")], BP4D)[0]
        assert cell(screen, iat_key, "n") == "1"
        assert cell(screen, iat_key, "avg").splitlines()[0] == f"{partial['avg']:.1f}"
        assert cell(screen, iat_key, "group").splitlines() == ["vit_tiny fmae_iat λ=2",
                                                                "folds 1–2 of 3, seed 0 (partial)",
                                                                "Δ vs paper: FMAE-IAT"]
        assert cell(screen, iat_key, "avg").splitlines()[-1] == f"{partial['avg'] - iat_paper.values['avg']:+.1f}"
        assert any(k.startswith("paper") and cell(screen, k, "avg") == f"{fmae_paper.values['avg']:.1f}"
                   for k in screen._rows)

        # c: complete seeds only — the IAT group has none: n 0, no numbers; c again: back.
        before = screen.builds
        await pilot.press("c")
        await rebuilt(pilot, screen, before)
        rows_c = {screen._rows[k].label: k for k in screen._rows if k.startswith("row")}
        assert cell(screen, rows_c["vit_tiny fmae_iat λ=2"], "n") == "0"
        assert cell(screen, rows_c["vit_tiny fmae_iat λ=2"], "avg") == "–"
        assert "complete only (c)" in screen_text(app)
        before = screen.builds
        await pilot.press("c")
        await rebuilt(pilot, screen, before)

        # m: F1@0.5 (the screen says it is not like for like with the paper); e: the last epoch.
        before = screen.builds
        await pilot.press("m")
        await rebuilt(pilot, screen, before)
        mean, std, _ = expected_au(truth[("fmae", "f1", "best")], BP4D)
        assert cell(screen, fmae_key, "avg").splitlines()[0] == f"{mean['avg']:.1f}±{std['avg']:.1f}"
        assert "F1@0.5 (%)" in screen_text(app) and "not like for like with these (m)" in screen_text(app)
        # ... so no row claims a Δ against the paper's F1 best-threshold numbers
        assert "Δ vs paper" not in cell(screen, fmae_key, "group") and "Δ:" not in screen_text(app)
        before = screen.builds
        await pilot.press("e")
        await rebuilt(pilot, screen, before)
        mean_l, std_l, _ = expected_au(truth[("fmae", "f1", "last")], BP4D)
        assert cell(screen, fmae_key, "avg").splitlines()[0] == f"{mean_l['avg']:.1f}±{std_l['avg']:.1f}"
        assert "epoch: last evaluated" in screen_text(app)
        # t names the exact metric and epoch it cannot re-score
        await pilot.press("t")
        await pilot.pause()
        said = [n.message for n in app._notifications]
        assert any("works on F1@0.5 of the best epoch; now: F1@0.5, last epoch" in m for m in said), said

        # p hides the paper's rows; b pins the selected group as the baseline (★, Δ against it, named).
        await pilot.press("p")
        await pilot.pause()
        assert not any(k.startswith("paper") for k in screen._rows)
        screen.table.move_cursor(row=screen.table.get_row_index(fmae_key))
        await pilot.pause()
        await pilot.press("b")
        await pilot.pause()
        assert "★" in cell(screen, fmae_key, "group")
        assert cell(screen, iat_key, "group").splitlines()[-1] == "Δ vs ★ vit_tiny fmae λ=0"
        assert "Δ: each row − the pinned ★ vit_tiny fmae λ=0" in screen_text(app)

        # The IAT group's grid: folds × the seeds its runs used (seed 0 only, not fmae.toml's 0,1): fold 3.
        screen.table.move_cursor(row=screen.table.get_row_index(iat_key))
        await pilot.pause()
        grid_text = str(screen.query_one("#results-grid").render())
        assert "2 done, 1 missing of 3 cells" in grid_text and "seed 1" not in grid_text
        # w widens the grid to seed 1 as well; a then lists exactly the 4 cells it adds.
        await pilot.press("w")
        await pilot.pause()
        screen.query_one("#results-prompt").value = "0,1"
        before = screen.builds
        await pilot.press("enter")
        await rebuilt(pilot, screen, before)
        screen.table.move_cursor(row=screen.table.get_row_index(iat_key))
        await pilot.pause()
        assert "2 done, 4 missing of 6 cells" in str(screen.query_one("#results-grid").render())
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        text = screen_text(app)
        assert "Queue the 4 missing cell(s) of vit_tiny fmae_iat λ=2?" in text
        listed = re.findall(r"add (fold \d seed \d λ \d)", text)
        assert listed == ["fold 3 seed 0 λ 2", "fold 1 seed 1 λ 2", "fold 2 seed 1 λ 2", "fold 3 seed 1 λ 2"], text
        await pilot.press("y")
        await wait_until(pilot, lambda: (runs / "queue.sqlite").exists() and _jobs(runs) == 4, timeout=60,
                         what="4 jobs queued")
        with sqlite3.connect(runs / "queue.sqlite") as db:
            cells = sorted(db.execute("SELECT fold, seed, lambda_id, recipe, model FROM jobs"))
        assert cells == [(1, 1, 2.0, "fmae_iat", "vit_tiny"), (2, 1, 2.0, "fmae_iat", "vit_tiny"),
                         (3, 0, 2.0, "fmae_iat", "vit_tiny"), (3, 1, 2.0, "fmae_iat", "vit_tiny")]

        # x: export, by default under the runs folder; the file's format follows its extension, and the
        # CSV reads back.
        await pilot.press("x")
        await pilot.pause()
        bar = screen.query_one("#results-prompt")
        assert bar.value == str(runs / "exports" / "results-bp4d.md")
        out = tmp_path / "tables.csv"
        bar.value = str(out)
        await pilot.press("enter")
        await wait_until(pilot, lambda: out.exists(), what="export")
        rows_back = read_csv(out.read_text())
        assert any(r.get("group") == "vit_tiny fmae λ=0" for r in rows_back)
        # A relative name goes where `fmae report --out` puts it: under the runs folder's exports/.
        await pilot.press("x")
        await pilot.pause()
        bar.value = "paper/tables.tex"
        await pilot.press("enter")
        await wait_until(pilot, lambda: (runs / "exports" / "paper" / "tables.tex").exists(), what="relative export")
        assert "\\begin{tabular}" in (runs / "exports" / "paper" / "tables.tex").read_text()
        assert not (Path.cwd() / "paper" / "tables.tex").exists()
        # A bad extension is one clear line, and writes nothing.
        await pilot.press("x")
        await pilot.pause()
        bar.value = str(tmp_path / "tables.xls")
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert not (tmp_path / "tables.xls").exists()

    # Every choice survives a restart: metric, epoch, paper hidden, the pinned group, the widened grid.
    app = create_app(config, runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen.builds > 0, what="results")
        screen = app.screen
        await pilot.pause()
        assert (screen.metric, screen.epoch, screen.show_paper, screen.widen) == ("f1", "last", False, (0, 1))
        text = screen_text(app)
        assert "F1@0.5 (%)" in text and "epoch: last evaluated" in text
        assert "Δ: each row − the pinned ★ vit_tiny fmae λ=0" in text


def _jobs(runs: Path) -> int:
    try:
        with sqlite3.connect(runs / "queue.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    except sqlite3.Error:
        return -1


async def test_results_with_no_runs_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """And, until its first tables are built (at 100,000 runs ~30 s), that it is reading them."""
    import threading

    from fmae import report

    config = tmp_path / "fmae.toml"
    config.write_text(default_config_text(), encoding="utf-8")
    gate, build = threading.Event(), report.build
    monkeypatch.setattr(report, "build", lambda *a, **k: gate.wait(30) and build(*a, **k))
    app = create_app(config, tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("escape", "R")  # from Datasets (no runs yet) home, then Results
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen), what="Results")
        await pilot.pause()
        assert "reading every run's summary" in screen_text(app) and app.screen.builds == 0
        gate.set()
        await wait_until(pilot, lambda: app.screen.builds > 0, what="built")
        await pilot.pause()
        assert "no finished training runs to tabulate" in screen_text(app)
        assert "reading" not in screen_text(app)


async def test_a_remembered_group_by_key_no_run_has_is_dropped_not_a_blank_screen(study) -> None:
    from fmae_tui import prefs

    config, runs, _ = study
    prefs.save("results", {"by": ["epoch"], "metric": "auc"})  # a typo saved on an earlier visit
    app = create_app(config, runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen.report is not None,
                         what="a table")
        screen = app.screen
        assert screen.by == () and screen.metric == "auc" and "ROC AUC (%)" in screen_text(app)
        said = [n.message for n in app._notifications]
        assert any("--by epoch" in m and "did you mean epochs" in m and "dropped" in m for m in said), said
    assert prefs.load("results")["by"] == []


async def test_results_read_the_runs_through_the_reports_cache_and_show_a_run_finished_since(
        study, monkeypatch: pytest.MonkeyPatch) -> None:
    """The screen reads the runs as `fmae report` does (runs/.run-cache.json: a rebuild reads only the
    folders that changed, at 10,000 runs 0.8 s instead of 4.1 s), rebuilds at a poll only when the app's
    run alerts saw a run move (at 100,000 runs a rebuild takes 8.7 s, and polls come every 10 s), and a run
    finished since it opened shows then, in its group's numbers."""
    from fmae import run_cache, run_watch

    config, runs, truth = study
    monkeypatch.setattr(run_cache, "RECENT_S", 0.0)  # the study's folders were written just now
    monkeypatch.setattr(run_watch, "RACY_NS", 0)
    read: list[Path] = []
    monkeypatch.setattr(run_cache, "load_run", lambda path: read.append(path) or load_run(path))
    app = create_app(config, runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen.builds > 0, what="results")
        screen: ResultsScreen = app.screen
        assert len(read) == 8 and (runs / run_cache.CACHE_NAME).is_file()

        async def alerts_look() -> None:  # as the app's timer does every 3 s
            app._look_for_alerts()
            await wait_until(pilot, lambda: not app._alerts_out, what="the alerts' look")

        await alerts_look()
        before = screen.builds
        screen.poll()  # its last build began before the alerts' first look: built again
        await rebuilt(pilot, screen, before)
        await alerts_look()
        screen.poll()  # nothing moved
        await pilot.pause()
        assert screen.builds == before + 1 and not screen._building
        values = rand_values(random.Random(9), BP4D)
        new_run(runs, au_config(3, 0, 2.0, "fmae_iat"), "done",
                {"task": "au", "best_epoch": 2, "best": au_record(2, values, values, values), "last": None})
        await alerts_look()
        screen.poll()
        await rebuilt(pilot, screen, before + 1)
        assert len(read) == 9  # only the new folder read
        rows = {screen._rows[k].label: k for k in screen._rows if k.startswith("row")}
        iat = {0: {**truth[("iat", "f1_best", "best")][0], 3: values}}
        shown = cell(screen, rows["vit_tiny fmae_iat λ=2"], "avg").splitlines()[0]  # no longer partial
        assert shown == f"{expected_au(iat, BP4D)[0]['avg']:.1f}", rows


def test_the_run_alerts_count_what_the_results_read_and_not_a_heartbeat(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """FmaeApp.runs_changes moves with RunAlerts.changes: a run come or gone, or one with another state or
    summary; a running run's heartbeat (status.json every few seconds) is none of these."""
    from fmae import run_watch
    from fmae_tui.run_alerts import RunAlerts

    monkeypatch.setattr(run_watch, "RACY_NS", 0)
    monkeypatch.setattr(run_watch, "_SHARED", {})
    runs = tmp_path / "runs"
    run = new_run(runs, au_config(1, 0), "running")
    alerts = RunAlerts(runs)
    alerts.look()
    assert alerts.changes == 1  # a run came
    run.heartbeat(step=5)
    alerts.look()
    assert alerts.changes == 1
    values = rand_values(random.Random(1), BP4D)
    run.write_summary({"task": "au", "best_epoch": 1, "best": au_record(1, values, values, values)})
    alerts.look()
    assert alerts.changes == 2
    run.update_status(state="done")
    alerts.look()
    assert alerts.changes == 3
    new_run(runs, au_config(2, 0), "done")
    alerts.look()
    assert alerts.changes == 4
    shutil.rmtree(run.path)
    alerts.look()
    assert alerts.changes == 5
