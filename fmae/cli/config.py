"""`fmae config show|set|recipe`: the configuration in force, one key edited, a dataset's resolved recipe."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from fmae.cli.common import ConfigOpt, RunsDirOpt, out
from fmae.errors import FmaeError

app = typer.Typer(help="Show and edit fmae.toml.", no_args_is_help=True)


@app.command("show")
def config_show(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Show the configuration in force and where it came from."""
    from fmae.config import load_project

    p = load_project(config, runs_dir)
    out.print(f"config:   {p.label}")
    out.print(f"runs_dir: {p.runs_dir}")
    out.print(f"compute:  gpus={p.gpus} runs_per_gpu={p.runs_per_gpu} min_free_memory_gib={p.min_free_memory_gib} "
              f"cpu_slots={p.cpu_slots} device={p.device}")
    out.print(f"executor: {p.executor}")
    out.print(f"defaults: {dict(p.defaults)}")
    for name, loc in p.datasets.items():
        where = loc.labels or (f"{loc.train_labels} / {loc.test_labels}" if loc.train_labels else "")
        out.print(f"dataset {name}: root={loc.root} labels={where or '-'}"
                  + (" (synthetic)" if loc.synthetic else ""))


@app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="Dotted key, e.g. compute.cpu_slots or datasets.bp4d.root.")],
    value: Annotated[str, typer.Argument(help="A TOML value (2, 3e-4, true, [0, 1]) or plain text.")],
    config: ConfigOpt = None,
) -> None:
    """Set one key in fmae.toml; comments and layout are kept, and an invalid result is refused."""
    from fmae.config import find_config, parse_set_options, update_config

    path = find_config(config)
    if path is None:
        raise FmaeError("no fmae.toml here or above — run `fmae init` first")
    update_config(path, {key: parse_set_options([f"{key}={value}"])[key]})
    out.print(f"{path}: {key} = {value}")


@app.command("recipe")
def config_recipe(
    dataset: Annotated[str, typer.Argument(help="Benchmark name.")],
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="fmae or fmae_iat (default: fmae.toml's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="key=value over the recipe (repeatable).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Show a dataset's resolved training settings and which layer set each one (as `fmae train` resolves
    them: the paper's recipe < fmae.toml < the command line; AU benchmarks shown for fold 1)."""
    from fmae.config import load_project, parse_set_options
    from fmae.registry import get_dataset
    from fmae.run_config import resolve_run_config

    project = load_project(config)
    spec = get_dataset(dataset)
    resolved = resolve_run_config(project, spec.name, recipe=recipe, fold=1 if spec.task == "au" else None,
                                  seed=int((project.defaults.get("seeds") or [0])[0]),
                                  cli=parse_set_options(set_ or []), generate=False)
    name = resolved.values["recipe"]
    table = Table(title=f"{spec.name} / {name}")
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    for key in sorted(resolved.values):
        table.add_row(key, Text(str(resolved.values[key])), Text(resolved.sources[key]))
    out.print(table)
