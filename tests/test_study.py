"""The study layer: a matrix is one resolved template cloned per cell, and data is made before the lock."""

from __future__ import annotations

import re
from pathlib import Path

from fmae.config import default_config_text, load_project
from fmae.queue import Queue
from fmae.run_config import resolve_run_config
from fmae.study import add_matrix, expand_matrix

TINY = "synthetic = { subjects = 4, frames = 2, size = 32, seed = 0 }"


def test_cloned_cells_are_the_configs_each_cell_resolves_to(tmp_path: Path) -> None:
    (tmp_path / "labels.jsonl").write_text("")
    project = load_project(cwd=tmp_path)
    cli = {"model": "vit_tiny", "epochs": 1, "blr": 0.003}
    where = dict(root=tmp_path, labels=tmp_path / "labels.jsonl")
    cells = expand_matrix(project, "bp4d", folds=[2, 1], seeds=[3, 0], lambdas=[0, 2], recipe="fmae_iat", cli=cli,
                          generate=False, **where)
    assert [(c.values["seed"], c.values["lambda_id"], c.values["fold"]) for c in cells] == [
        (3, 0, 2), (3, 0, 1), (3, 2, 2), (3, 2, 1), (0, 0, 2), (0, 0, 1), (0, 2, 2), (0, 2, 1)]
    for cell in cells:
        v = cell.values
        alone = resolve_run_config(project, "bp4d", recipe="fmae_iat", fold=v["fold"], seed=v["seed"], generate=False,
                                   cli={**cli, "lambda_id": v["lambda_id"]}, **where)
        assert (cell.values, cell.sources) == (alone.values, alone.sources)


def test_configured_synthetic_data_is_made_before_the_queue_lock_is_taken(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "fmae.toml"
    config.write_text(re.sub(r"synthetic = \{[^}]*\}", TINY, default_config_text()), encoding="utf-8")
    project = load_project(config, tmp_path / "runs")
    marker = tmp_path / "data" / "synth" / "bp4d" / "synth.json"  # written last: a complete copy
    seen = []
    real = Queue.exclusive

    def exclusive(self):
        seen.append(marker.is_file())
        return real(self)

    monkeypatch.setattr(Queue, "exclusive", exclusive)
    _, jobs = add_matrix(project, "bp4d", folds=[1], seeds=[0], cli={"model": "vit_tiny"}, gpus_per_run=0)
    assert seen == [True] and len(jobs) == 1
