"""`fmae diff`: run folders made by the engine's own path (the matrix `fmae queue add` expands, resolved
against a real fmae.toml), diffed as two runs, as two groups, and across the two run.toml layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_fmae
from fmae.config import load_project
from fmae.experiments import expand_matrix
from fmae.run_config import create_run
from fmae.errors import FmaeError
from fmae.run_diff import diff, diff_lines, resolve, sides_of
from fmae.runs import RunDir

OLD_RUN = Path(__file__).parent / "fixtures" / "old_runs" / "20261202-002439-bp4d-f1-s0-l0-vit_tiny-fa52"


def key_line(lines: list[str], leaf: str) -> int:
    """The line naming a key: `blr` in a flat run.toml, `optim.blr` under a typed section."""
    return next(i for i, line in enumerate(lines) if line and not line[0].isspace() and line.rsplit(".", 1)[-1] == leaf)


def make_runs(tmp_path: Path, lambdas: list[float], seeds: list[int], dataset_name: str = "bp4d",
              **cli) -> list[RunDir]:
    project = load_project(runs_dir=tmp_path / "runs", cwd=tmp_path)
    cells = expand_matrix(project, dataset_name, folds=[1], seeds=seeds, lambdas=lambdas, recipe=None,
                          cli={"model": "vit_tiny", "epochs": 2, **cli}, generate=False)
    return [create_run(project.runs_dir, cell) for cell in cells]


@pytest.fixture
def study(tmp_path: Path) -> dict[tuple[float, int], RunDir]:
    """bp4d fold 1, vit_tiny: λ 0 and 2 × seeds 0 and 1, one λ-2 run at blr 0.001 from the command line."""
    runs = {}
    for run in make_runs(tmp_path, [0, 2], [0, 1]):
        cfg = run.read_config()
        runs[(cfg["lambda_id"], cfg["seed"])] = run
    return runs


def test_two_runs_show_only_the_keys_that_differ_with_their_sources(study, tmp_path: Path) -> None:
    [fast] = make_runs(tmp_path, [2], [0], blr=0.001)
    base = study[(0.0, 0)]
    result = run_fmae("diff", base.path, fast.id, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"A: {base.id}" and lines[1] == f"B: {fast.id}"
    assert "2 key(s) differ" in lines[2]
    blr = lines.index("optim.blr")  # named by its section, whatever the run.toml layout
    assert lines[blr + 1].split() == ["A", "0.0002", "(recipe", "bp4d/fmae)"]
    assert lines[blr + 2].split() == ["B", "0.001", "(command", "line)"]
    lam = lines.index("identity.lambda_id")
    assert lines[lam + 1].split()[:2] == ["A", "0"] and lines[lam + 2].split()[:2] == ["B", "2"]
    for same in ("schedule.epochs", "model.model", "identity.seed", "identity.fold", "identity.dataset",
                 "schedule.batch_size"):
        assert same not in lines  # equal on both sides: not shown


def test_two_groups_named_as_the_report_names_them(study, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = run_fmae("diff", "vit_tiny fmae λ=0", "vit_tiny fmae lambda=2", "--state", "all",
                      "--runs-dir", runs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["A: bp4d vit_tiny fmae λ=0 (2 runs)", "B: bp4d vit_tiny fmae λ=2 (2 runs)"]
    # seeds 0 and 1 on both sides: no difference; λ differs in every run of each
    assert lines[2:] == ["1 key(s) differ (value, then the source run.toml recorded for it):", "identity.lambda_id",
                         "  A  2 runs: 0 (command line)", "  B  2 runs: 2 (command line)"]
    # The runs are queued, not done: by default a group holds done runs, and the error says so.
    bad = run_fmae("diff", "vit_tiny fmae λ=0", "vit_tiny fmae λ=2", "--runs-dir", runs, cwd=tmp_path)
    assert_one_line_error(bad, "vit_tiny fmae λ=0", "groups: none", "--state all")
    with pytest.raises(FmaeError, match=r"'vit_base' is neither a run folder .* 'bp4d vit_tiny fmae λ=2' \(2 runs\)"):
        resolve(runs, "vit_base", states=("all",))  # what a typo hears: the groups there are
    make_runs(tmp_path, [0], [0], dataset_name="disfa")
    with pytest.raises(FmaeError, match=r"'vit_tiny fmae λ=0' is a group on bp4d, disfa: put the benchmark first"):
        resolve(runs, "vit_tiny fmae λ=0", states=("all",))
    assert resolve(runs, "disfa vit_tiny fmae lambda=0.0", states=("all",))[0] == "disfa vit_tiny fmae λ=0"


def test_a_flat_run_toml_and_one_with_typed_sections_diff_key_for_key(tmp_path: Path) -> None:
    """A run of the release before typed sections (flat [config], committed in tests/fixtures/old_runs)
    against a copy written with an [config.optim] table and another blr: one key differs, not the layout."""
    old = RunDir(OLD_RUN)
    config, provenance = old.read_config(), old.read_provenance()
    sectioned = {"optim": {"blr": 0.0005, "batch_size": config["batch_size"]},
                 **{k: v for k, v in config.items() if k not in ("blr", "batch_size")}}
    set_by = dict(provenance["set_by"], **{"optim.blr": "fmae.toml:3"})
    set_by.pop("blr")
    new = RunDir.create(tmp_path / "runs", "sectioned-run", sectioned, {**provenance, "set_by": set_by})
    sides = sides_of([(old.id, [old.path]), (new.id, [new.path])])
    rows = diff(sides)
    assert [row.key.rsplit(".", 1)[-1] for row in rows] == ["blr"]  # batch_size moved, the same value
    assert [(v.text, v.source) for v in rows[0].cells[0]] == [(f"{config['blr']:g}", provenance["set_by"]["blr"])]
    assert [(v.text, v.source) for v in rows[0].cells[1]] == [("0.0005", "fmae.toml:3")]
    same = sides_of([(old.id, [old.path]), (old.id, [old.path])])
    assert diff_lines(same, diff(same))[-1] == "no differences: the 2 configs are the same key for key"


def test_a_group_holds_the_runs_the_report_counts_and_says_one_run_not_one_runs(study, tmp_path: Path) -> None:
    """A group is the report's row: each (fold, seed) cell's newest run, the older one named as left
    out; a `fmae eval` re-evaluation of a λ 0 run is no run of the λ 0 group. Counts of one say "1 run"."""
    from fmae.config import Resolved

    runs = tmp_path / "runs"
    # Ids sort by their second: the first run of cell f1 s0 is dated a year back, so the second is newer.
    old = RunDir(study[(0.0, 0)].path.rename(runs / ("20251202-000000" + study[(0.0, 0)].id[15:])))
    [again] = make_runs(tmp_path, [0], [0], blr=0.001)  # the cell f1 s0 run again
    values = {**old.read_config(), "eval_checkpoint": str(old.path / "checkpoints" / "best.pt"),
              "source_run": old.id, "init": ""}
    create_run(runs, Resolved(values, dict.fromkeys(values, f"{old.path}/run.toml")), name="eval-best")
    result = run_fmae("diff", "vit_tiny fmae λ=0", "vit_tiny fmae λ=2", "--state", "all", "--runs-dir", runs,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"A: bp4d vit_tiny fmae λ=0 (2 runs, each cell's newest as `fmae report` counts them; "
                        f"left out, replaced by a newer run of its cell: {old.id})")
    blr = lines.index("optim.blr")
    assert lines[blr + 1].startswith("  A  ")
    assert set(lines[blr + 1][5:].split("; ")) == {"1 run: 0.0002 (recipe bp4d/fmae)", "1 run: 0.001 (command line)"}
    assert lines[blr + 2] == "  B  2 runs: 0.0002 (recipe bp4d/fmae)"
    assert "identity.eval_checkpoint" not in lines and "identity.seed" not in lines  # no eval run in A
    # One λ 0 run named by its id is one run, not a group of every λ 0 run.
    single = run_fmae("diff", again.id, "vit_tiny fmae λ=2", "--state", "all", "--runs-dir", runs, cwd=tmp_path)
    assert single.stdout.splitlines()[0] == f"A: {again.id}"
    (study[(2.0, 1)].path / "run.toml").unlink()  # now λ 2 holds one readable run
    with pytest.raises(FmaeError, match=r"'bp4d vit_tiny fmae λ=2' \(1 run\)\)"):
        resolve(runs, "vit_base", states=("all",))
    sides = sides_of([resolve(runs, again.id), resolve(runs, "vit_tiny fmae λ=2", states=("all",))])
    lines = diff_lines(sides, diff(sides))
    assert lines[:2] == [f"A: {again.id}", "B: bp4d vit_tiny fmae λ=2 (1 run)"]  # a group of one is still a group
    assert lines[lines.index("optim.blr") + 2] == "  B  1 run: 0.0002 (recipe bp4d/fmae)"
