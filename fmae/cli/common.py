"""What every command module shares: the two consoles, the options that mean the same everywhere, the
layer of options a user gave, and the one-line printing of errors (`run_app`).

Exit codes: 0 success; 1 the work itself failed; 2 bad input or usage (one line naming what to fix).
Nothing here imports torch: `fmae --help`, `fmae queue ls` and `fmae report` start fast.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from fmae.errors import FmaeError, WorkFailed

out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="fmae.toml to use (default: $FMAE_CONFIG, else the nearest one upwards)."),
]
RunsDirOpt = Annotated[Optional[Path], typer.Option("--runs-dir", help="Runs folder (overrides fmae.toml).")]
RootOpt = Annotated[Optional[Path], typer.Option("--root", help="Dataset folder for this call (overrides fmae.toml).")]
LabelsOpt = Annotated[Optional[Path], typer.Option("--labels", help="AU label file for this call (overrides fmae.toml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="key=value over recipe and fmae.toml (repeatable).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on the terminal.")]
NprocOpt = Annotated[int, typer.Option("--nproc", help="Processes (DDP via torchrun): GPUs to use, or CPU processes (gloo).")]
NodesOpt = Annotated[int, typer.Option("--nodes", help="Slurm nodes: submit the run through submitit ([executor.slurm]) instead of training here.")]
GpusPerNodeOpt = Annotated[Optional[int], typer.Option("--gpus-per-node", help="GPUs (DDP processes) per Slurm node; submits through submitit.")]
NnodesOpt = Annotated[int, typer.Option("--nnodes", help="Hosts training this run together (torchrun); run the same command on each.")]
NodeRankOpt = Annotated[int, typer.Option("--node-rank", help="This host's number, 0 to N-1 (node 0 writes the run folder).")]
MasterOpt = Annotated[Optional[str], typer.Option("--master", help="HOST:PORT of node 0, where the hosts meet (the same on every host).")]


def cli_layer(**options: Any) -> dict[str, Any]:
    """Options the user actually gave (None = not given), with --set pairs merged in."""
    from fmae.config import parse_set_options

    sets = parse_set_options(options.pop("set_") or [])
    given = {k: v for k, v in options.items() if v is not None}
    clash = sorted(set(given) & set(sets))
    if clash:
        raise FmaeError(f"--set {clash[0]}=… and --{clash[0].replace('_', '-')} both given: use one")
    for identity in ("seed", "fold", "task", "dataset", "recipe"):
        if identity in sets:
            raise FmaeError(f"--set {identity}=…: {identity} names the run; use --{identity} instead")
    return {**given, **sets}


def show_dry_run(resolved, what: str) -> None:
    """`--dry-run`: the resolved config as a table by section, in run.toml's order (identity, model, optim,
    schedule, augment, data, execution, then keys no section owns): each key, its value and the layer that
    set it, then the warnings of `config_warnings`. A long value or source folds onto more lines rather
    than being cut, so 80 columns show all of it."""
    from fmae.run_config import config_warnings
    from fmae.run_spec import SECTION_OF, SECTIONS, sectioned

    body = sectioned(resolved.values)
    groups = [(name, list(body[name])) for name in SECTIONS if name in body]
    other = sorted(k for k in resolved.values if k not in SECTION_OF)
    if other:
        groups.append(("other", other))
    table = Table(title=f"{what} — resolved config (dry run: nothing created)")
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    for name, keys in groups:  # `out` reads no markup: a `[` in a value or a path prints as it is
        table.add_row(f"[{name}]", "", "", style="bold")
        for i, key in enumerate(keys):
            table.add_row(f"  {key}", str(resolved.values[key]), resolved.sources.get(key, ""),
                          end_section=i == len(keys) - 1)
    out.print(table)
    for warning in config_warnings(resolved.values):
        err.print(f"warning: {warning}", soft_wrap=True)


def is_benchmark_name(text: str) -> bool:
    """A benchmark name wins over a same-named folder; `./NAME` or any path with a slash is a folder."""
    from fmae.registry import DATASETS, dataset_key

    return dataset_key(text) in DATASETS and "/" not in text


def size_text(n: float) -> str:
    """Bytes as a person reads them (decimal units: 1 KB = 1000 B)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def run_app(app: Callable[[], Any]) -> None:
    """Run the Typer app; a user's mistake or failed work is one line on stderr with its exit code.
    A command that trained leaves without the interpreter's teardown (`fmae/process_exit.py`)."""
    try:
        _run_app(app)
    except SystemExit as e:
        from fmae.process_exit import exit_now_if_trained

        exit_now_if_trained(e.code)
        raise


def _run_app(app: Callable[[], Any]) -> None:
    try:
        app()
    except (FmaeError, WorkFailed) as e:
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except OSError as e:  # no permission, read-only or full disk: the machine's answer, not a bug
        from fmae.errors import environment_error

        said = environment_error(e)
        if said is None:
            _crash()
        err.print(f"error: {said}", markup=False, soft_wrap=True)
        sys.exit(said.exit_code)
    except Exception:
        _crash()


def _crash() -> None:
    """A bug in fmae: one line for the user, the traceback in a file for the report."""
    crash = Path(tempfile.gettempdir()) / f"fmae-crash-{int(time.time())}.log"
    crash.write_text(traceback.format_exc())
    err.print(f"internal error: {sys.exc_info()[1]!r} (traceback in {crash}; please report it)", markup=False)
    sys.exit(1)
