"""`fmae`: the command line over the engine — the root Typer app, built here from each command group's own.

Every command module holds its own `typer.Typer()` and imports only `fmae.cli.common` (never this
module), so the commands are added here, explicitly, in the order `fmae --help` lists them.
Exit codes: 0 success; 1 the work itself failed; 2 bad input or usage (one line naming what to fix).
Commands import heavy modules lazily so `fmae --help` and the data tools start fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fmae import __version__
from fmae.cli import compare, config, data, diff, features, predict, pretrain, project, queue, report, scheduler, train
from fmae.cli.common import out, run_app

app = typer.Typer(
    help="fmae: train and study facial-behaviour models (FMAE / FMAE-IAT).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"fmae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """fmae: train and study facial-behaviour models (FMAE / FMAE-IAT)."""


# Top-level commands first (datasets, init, synth; train, exec, probe-id, eval; pretrain, visualize;
# report; predict, export), then the groups.
for commands in (project.app, train.app, pretrain.app, report.app, compare.app, diff.app, features.app, predict.app):
    app.add_typer(commands)
app.add_typer(data.app, name="data")
app.add_typer(config.app, name="config")
app.add_typer(scheduler.app, name="scheduler")
app.add_typer(queue.app, name="queue")


def main() -> None:
    run_app(app)
