"""`fmae diff A B`: the resolved config keys that differ between two runs or two groups of runs, each
value with the source its run.toml recorded (the numbers' side is `fmae compare`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fmae.cli.common import ConfigOpt, RunsDirOpt, out

app = typer.Typer()


@app.command("diff")
def diff_cmd(
    a: Annotated[str, typer.Argument(help="A run folder, a run id in the runs folder, or a group named as `fmae compare` takes it (e.g. \"vit_base fmae λ=0\", or \"bp4d vit_base fmae λ=0\").")],
    b: Annotated[str, typer.Argument(help="The other run or group.")],
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", "-d", help="Groups: only runs of this benchmark (repeatable).")] = None,
    state: Annotated[str, typer.Option("--state", help="Groups: runs in these states, e.g. done,running, or all.")] = "done",
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Only the config keys that differ between two runs (or two groups), each value with its source."""
    from fmae.config import load_project
    from fmae.registry import dataset_key
    from fmae.run_diff import diff, diff_lines, resolve, sides_of

    project = load_project(config, runs_dir)
    datasets = tuple(dataset_key(d) for d in dataset or ())
    states = tuple(s.strip() for s in state.split(",") if s.strip())
    sides = sides_of([resolve(project.runs_dir, spec, datasets, states) for spec in (a, b)])
    for line in diff_lines(sides, diff(sides)):
        out.print(line, soft_wrap=True)
